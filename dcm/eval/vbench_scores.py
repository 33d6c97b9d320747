"""VBench scores through the real `vbench` package, in its `custom_input` mode: the clips are written
as mp4 files with their prompts and vbench's own evaluators read them back.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path

import numpy as np

from dcm.config import VBenchConfig
from dcm.data.video_io import write_video
from dcm.errors import StageError


def upscale(clips: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour upscaling by the smallest integer factor that makes the shorter side at least
    `min_side` (vbench's optical-flow and interpolation networks downsample 8-16x)."""
    factor = max(1, math.ceil(min_side / min(clips.shape[2:4])))
    return clips.repeat(factor, axis=2).repeat(factor, axis=3) if factor > 1 else clips


def write_clips(clips: np.ndarray, captions: list[str], folder: Path, fps: float) -> dict[str, str]:
    """One mp4 per clip; returns vbench's prompt list (file name → prompt)."""
    if folder.exists():
        shutil.rmtree(folder)  # a previous run with more prompts must not leave extra videos behind
    folder.mkdir(parents=True)
    prompts = {}
    for index, (clip, caption) in enumerate(zip(clips, captions)):
        name = f"{index:04d}.mp4"
        write_video(folder / name, clip, fps)
        prompts[name] = caption
    return prompts


def vbench_scores(clips: np.ndarray, captions: list[str], name: str, settings: VBenchConfig, out: Path,
                  device: str, fps: float) -> dict[str, float]:
    """{vbench_<dimension>: mean score over the clips} for every configured dimension (weights checked
    by the caller: dcm.eval.vbench_weights.check_weights)."""
    if not settings.dimensions:
        return {}
    from vbench import VBench
    folder = out / name
    prompts = write_clips(upscale(clips, settings.min_side), captions, folder / "videos", fps)
    bench = VBench("cuda" if device == "cuda" else "cpu", None, str(folder))
    # vbench prints progress to stdout; keep it out of the pipeline's own output (it stays in its log).
    with open(folder / "vbench.log", "w") as log, contextlib.redirect_stdout(log):
        bench.evaluate(str(folder / "videos"), name, prompt_list=prompts, dimension_list=list(settings.dimensions),
                       local=True, mode="custom_input")
    results_file = folder / f"{name}_eval_results.json"
    if not results_file.exists():
        raise StageError(f"vbench wrote no results for {name}; see {folder / 'vbench.log'}")
    results = json.loads(results_file.read_text())
    return {f"vbench_{dimension}": float(results[dimension][0]) for dimension in settings.dimensions}
