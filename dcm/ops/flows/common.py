"""Pieces every stage flow uses: a markdown table and a training progress bar for Prefect artifacts, and sample videos
for MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from dcm.data.video_io import write_video
from dcm.ops.tracking import StageRun


def markdown_table(title: str, rows: dict[str, float], note: str = "") -> str:
    lines = [f"# {title}", "", note, "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
              for key, value in rows.items()]
    return "\n".join(lines)


def log_sample_videos(run: StageRun, clips: np.ndarray, captions: list[str], fps: float, crf: int,
                      folder: str, count: int) -> None:
    """The first `count` clips as mp4 files (named by caption) under the run's `folder` artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        for index, (clip, caption) in enumerate(zip(clips[:count], captions[:count])):
            name = "".join(c if c.isalnum() else "_" for c in caption)[:60]
            path = Path(tmp) / f"{index:02d}_{name}.mp4"
            write_video(path, clip, fps, options={"crf": str(crf)})
            run.log_artifact(path, folder)


class StepProgress:
    """A progress artifact of the flow run (Prefect's UI draws it as a bar), moved at every logged training step."""

    def __init__(self, total_steps: int, description: str):
        self.total = max(total_steps, 1)
        self.artifact_id = create_progress_artifact(progress=0.0, description=description)

    def update(self, step: int) -> None:
        update_progress_artifact(self.artifact_id, progress=min(100.0, 100.0 * step / self.total))
