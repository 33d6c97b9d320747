"""Stage `evaluate`: the teacher (reference sampler, CFG), the DCM student at each configured step count
and every baseline present, all from the same prompts, seeds and initial noise, scored by the judge,
fidelity to the teacher (PSNR/SSIM), saturation, and latency measured in the same run.

Outputs in `evaluate.out_dir`: metrics.json (DVC metrics), quality.csv (DVC plots), report.md, charts
(PNG) and samples.png (one row per model and prompt).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dcm.config import DCMConfig
from dcm.data.tensors import video_to_clips
from dcm.errors import StageError
from dcm.eval.fidelity import psnr, saturation_stats, ssim
from dcm.eval.judge import judge_many
from dcm.eval.prompts import heldout_prompts
from dcm.eval.report import write_report
from dcm.io import write_json_atomic
from dcm.sampling import generate
from dcm.schedule import sampling_sigmas
from dcm.train.loop import resolve_device

STUDENTS = ("dcm", "lcm", "pcm")  # evaluated when their folder exists; dcm must
METRICS, TABLE = "metrics.json", "quality.csv"


def _timed(make: Callable[[], torch.Tensor], repeats: int, count: int) -> tuple[torch.Tensor, float]:
    """Run `make` `repeats` times; return its output and the median seconds per clip."""
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = make()
        seconds.append((time.perf_counter() - start) / count)
    return out, statistics.median(seconds)


def score(cfg: DCMConfig, clips: np.ndarray, prompts: list[dict], reference: np.ndarray | None) -> dict[str, float]:
    scores = judge_many(clips, prompts, cfg.data, cfg.judge) if cfg.data.source == "shapes" else {}
    metrics = {f"judge_{k}": v for k, v in scores.items()} | saturation_stats(clips)
    if reference is not None:
        metrics["psnr_vs_teacher"] = float(np.mean([psnr(c, r) for c, r in zip(clips, reference)]))
        metrics["ssim_vs_teacher"] = float(np.mean([ssim(c, r) for c, r in zip(clips, reference)]))
    return metrics


def run_evaluate_stage(cfg: DCMConfig, on_result: Callable[[str, dict], None] | None = None) -> dict:
    from dcm.pipeline import DCMPipeline
    from dcm.train.teacher import load_teacher
    ev, sampling = cfg.evaluate, cfg.teacher.sampling
    device = resolve_device(ev.device)
    if not (Path(cfg.distill.out_dir) / "dcm").is_dir():
        raise StageError(f"{Path(cfg.distill.out_dir) / 'dcm'} not found: evaluation needs the DCM student; run "
                         "the distill stages first (dvc repro distill_detail)")
    prompts = heldout_prompts(cfg.shard.dir, ev.prompts)
    captions, seeds = [p["caption"] for p in prompts], [p["seed"] for p in prompts]
    teacher = load_teacher(cfg, device)

    def teacher_clips() -> torch.Tensor:
        return generate(teacher, captions, seeds, cfg.data.frames, cfg.data.height, cfg.data.width,
                        sampling_sigmas(cfg.schedule, sampling.steps), sampling.guidance_scale,
                        cfg.teacher.negative_prompt, ev.batch_size)

    video, teacher_latency = _timed(teacher_clips, ev.latency_repeats, len(prompts))
    reference = video_to_clips(video)
    rows = [{"model": "teacher", "steps": sampling.steps, **score(cfg, reference, prompts, None),
             "latency_s": teacher_latency, "speedup": 1.0}]
    samples = {f"teacher {sampling.steps}": reference}
    for name in STUDENTS:
        folder = Path(cfg.distill.out_dir) / name
        if not folder.is_dir():
            continue
        pipe = DCMPipeline.from_pretrained(folder, device, detail_weights="merged")
        for steps in ev.student_steps:
            def student_clips() -> torch.Tensor:
                return pipe.videos(captions, seeds, steps, cfg.data.frames, cfg.data.height, cfg.data.width,
                                   ev.batch_size)

            video, latency = _timed(student_clips, ev.latency_repeats, len(prompts))
            clips = video_to_clips(video)
            row = {"model": name, "steps": steps, **score(cfg, clips, prompts, reference), "latency_s": latency,
                   "speedup": teacher_latency / latency}
            rows.append(row)
            samples[f"{name} {steps}"] = clips
            if on_result:
                on_result(f"{name}_{steps}", row)
    out = Path(ev.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {f"{row['model']}_{row['steps']}": {k: v for k, v in row.items() if k not in ("model", "steps")}
               for row in rows}
    metrics["device"] = str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)
    metrics["prompts"] = len(prompts)
    write_json_atomic(out / METRICS, metrics)
    files = write_report(rows, samples, captions[: ev.grid_prompts], out, metrics["device"])
    return {"metrics": metrics, "rows": rows, "files": files, "prompts": prompts}
