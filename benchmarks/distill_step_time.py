"""Per-step time of a distillation stage with the teacher online vs read from precomputed trajectories, or (--vary
compile) eager vs compiled transformer blocks (train.compile: blocks, the student's; all, the teacher's too;
teacher online).

    python benchmarks/distill_step_time.py [--steps 20] [--methods semantic,detail] [--vary teacher_mode|compile] \
        [-S key=value ...]

Needs the teacher and precompute stages' outputs (dvc repro precompute). Trains into a temporary
folder (the project's students are untouched) and reports the median step time after the first step
(the median also keeps a compile's first steps out).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dcm.config import load_config
from dcm.ops.env import apply_runtime_defaults
from dcm.stages.distill import run_distill_stage

REPO = Path(__file__).resolve().parents[1]


VARIANTS = {"teacher_mode": ("online", "trajectory"), "compile": ("none", "blocks", "all")}


def setting(vary: str, variant: str, part: str) -> list[str]:
    if vary == "teacher_mode":
        return [f"distill.teacher_mode={variant}"]
    return ["distill.teacher_mode=online", f"distill.{part}.compile={variant}"]


def step_times(overrides: list[str], method: str, steps: int, variant: str, work: Path, vary: str = "teacher_mode") -> list[float]:
    part = {"semantic": "semantic", "detail": "detail"}.get(method, "baseline")
    cfg = load_config(REPO / "params.yaml", [
        *overrides, *setting(vary, variant, part), f"distill.{part}.steps={steps}", f"distill.{part}.log_every=1",
        f"distill.{part}.checkpoint_every={steps}", f"distill.checkpoint_dir={work / variant / 'ckpt'}",
        f"distill.out_dir={work / 'students'}", "distill.sample_prompts=1"])
    stamps: list[float] = []
    run_distill_stage(cfg, method, on_log=lambda step, metrics: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--methods", default="semantic,detail")
    parser.add_argument("--vary", choices=sorted(VARIANTS), default="teacher_mode")
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    apply_runtime_defaults(REPO)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86_64'}, {torch.get_num_threads()} threads)"
    print(f"machine: {device}; overrides: {args.overrides}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for method in args.methods.split(","):
            results = {}
            for variant in VARIANTS[args.vary]:
                torch._dynamo.reset()  # each variant compiles afresh: no cache entries carried over from the last
                # the detail stage starts from the semantic expert: train one (same setting) first
                if method == "detail":
                    step_times(args.overrides, "semantic", 2, variant, work, args.vary)  # into work/students, where detail looks
                results[variant] = statistics.median(step_times(args.overrides, method, args.steps, variant, work, args.vary))
            base, *others = VARIANTS[args.vary]
            print(f"{method}: {args.vary} {base} {results[base] * 1000:.0f} ms/step" + "".join(
                f", {other} {results[other] * 1000:.0f} ms/step ({base}/{other} = {results[base] / results[other]:.2f}×)"
                for other in others), flush=True)


if __name__ == "__main__":
    main()
