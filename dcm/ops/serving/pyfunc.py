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

from dcm.config import ServingConfig
from dcm.data.video_io import write_video
from dcm.pipeline import DCMPipeline
from dcm.schedule import inference_sigmas

PIPELINE_ARTIFACT = "pipeline"
OPTIONAL = ("seed", "steps", "height", "width", "frames")


def bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # served as HTTP 400


class DCMVideoModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipe = DCMPipeline.from_pretrained(context.artifacts[PIPELINE_ARTIFACT], device, detail_weights="merged")
        self.limits = ServingConfig(**context.model_config)  # serving: in params.yaml when it was registered

    def _request(self, row: dict) -> dict:
        defaults = self.pipe.info["defaults"]
        limits = self.limits
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad_request("each request row needs a non-empty string 'prompt'")
        if len(prompt) > limits.max_prompt_chars:
            raise bad_request(f"'prompt' has {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
        request = {"prompt": prompt, "seed": 0, "steps": limits.default_steps, "frames": defaults["frames"],
                   "height": defaults["height"], "width": defaults["width"]}
        for key in OPTIONAL:
            value = row.get(key)
            if value is None or (isinstance(value, float) and pd.isna(value)):
                continue
            if isinstance(value, bool) or not float(value).is_integer():
                raise bad_request(f"'{key}' must be an integer, got {value!r}")
            request[key] = int(value)
        if not 1 <= request["steps"] <= limits.max_steps:
            raise bad_request(f"'steps' must be between 1 and {limits.max_steps}, got {request['steps']}")
        try:  # the experts' segments hold a limited number of nodes each
            inference_sigmas(self.pipe.schedule, request["steps"], self.pipe.edges)
        except ValueError as error:
            raise bad_request(f"'steps': {error}") from None
        patch = self.pipe.family.patch_size
        for key, unit in (("height", patch[1]), ("width", patch[2]), ("frames", patch[0])):
            if request[key] < 1 or request[key] % unit:
                raise bad_request(f"'{key}' must be a positive multiple of {unit}, got {request[key]}")
        if request["frames"] > limits.max_frames:
            raise bad_request(f"'frames' is {request['frames']}; the limit is {limits.max_frames}")
        if request["height"] * request["width"] > limits.max_pixels:
            raise bad_request(f"height × width is {request['height'] * request['width']} pixels; the limit is "
                              f"{limits.max_pixels}")
        return request

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or "prompt" not in model_input.columns:
            raise bad_request("the request needs a 'prompt' column (e.g. {\"dataframe_records\": [{\"prompt\": ...}]})")
        if len(model_input) > self.limits.max_rows:
            raise bad_request(f"{len(model_input)} clips requested; the limit is {self.limits.max_rows} per request")
        requests = [self._request(row) for row in model_input.to_dict(orient="records")]  # all checked first
        rows = []
        for request in requests:
            generator = torch.Generator().manual_seed(request["seed"])
            frames = self.pipe(request["prompt"], num_inference_steps=request["steps"], generator=generator,
                               height=request["height"], width=request["width"], num_frames=request["frames"]).frames[0]
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "clip.mp4"
                write_video(path, (frames * 255).round().astype("uint8"), self.limits.fps,
                            options={"crf": str(self.limits.mp4_crf)})
                encoded = base64.b64encode(path.read_bytes()).decode("ascii")
            rows.append({"video_mp4_base64": encoded, "frames": request["frames"], "height": request["height"],
                         "width": request["width"], "steps": request["steps"]})
        return pd.DataFrame(rows)
