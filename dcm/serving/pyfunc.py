"""`DCMVideoModel`: prompt, seed, steps, size, frames → an mp4 (base64), wrapping `DCMPipeline`.

Request rows (a pandas DataFrame, or `{"dataframe_records": [...]}` over HTTP): `prompt` (required),
`seed`, `steps`, `height`, `width`, `frames` (optional; defaults from the pipeline). Response rows:
`video_mp4_base64`, `frames`, `height`, `width`, `steps`.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

PIPELINE_ARTIFACT = "pipeline"
OPTIONAL = ("seed", "steps", "height", "width", "frames")
MAX_STEPS = 50  # the teacher's Euler grid bounds a few-step sampler; more is never useful
FPS = 8


def bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # served as HTTP 400


class DCMVideoModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from dcm.pipeline import DCMPipeline
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipe = DCMPipeline.from_pretrained(context.artifacts[PIPELINE_ARTIFACT], device, detail_weights="merged")

    def _request(self, row: dict) -> dict:
        defaults = self.pipe.info["defaults"]
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad_request("each request row needs a non-empty string 'prompt'")
        request = {"prompt": prompt, "seed": 0, "steps": 4, "frames": defaults["frames"],
                   "height": defaults["height"], "width": defaults["width"]}
        for key in OPTIONAL:
            value = row.get(key)
            if value is None or (isinstance(value, float) and pd.isna(value)):
                continue
            if isinstance(value, bool) or not float(value).is_integer():
                raise bad_request(f"'{key}' must be an integer, got {value!r}")
            request[key] = int(value)
        if not 1 <= request["steps"] <= MAX_STEPS:
            raise bad_request(f"'steps' must be between 1 and {MAX_STEPS}, got {request['steps']}")
        patch = self.pipe.family.patch_size
        for key, unit in (("height", patch[1]), ("width", patch[2]), ("frames", patch[0])):
            if request[key] < 1 or request[key] % unit:
                raise bad_request(f"'{key}' must be a positive multiple of {unit}, got {request[key]}")
        return request

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from dcm.data.video_io import write_video
        if not isinstance(model_input, pd.DataFrame) or "prompt" not in model_input.columns:
            raise bad_request("the request needs a 'prompt' column (e.g. {\"dataframe_records\": [{\"prompt\": ...}]})")
        rows = []
        for row in model_input.to_dict(orient="records"):
            request = self._request(row)
            generator = torch.Generator().manual_seed(request["seed"])
            frames = self.pipe(request["prompt"], num_inference_steps=request["steps"], generator=generator,
                               height=request["height"], width=request["width"], num_frames=request["frames"]).frames[0]
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "clip.mp4"
                write_video(path, (frames * 255).round().astype("uint8"), FPS, options={"crf": "18"})
                encoded = base64.b64encode(path.read_bytes()).decode("ascii")
            rows.append({"video_mp4_base64": encoded, "frames": request["frames"], "height": request["height"],
                         "width": request["width"], "steps": request["steps"]})
        return pd.DataFrame(rows)
