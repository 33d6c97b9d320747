"""Per-step time of a distillation stage with the teacher online vs read from precomputed trajectories.

    python benchmarks/distill_step_time.py [--steps 20] [--methods semantic,detail] [-S key=value ...]

Needs the teacher and precompute stages' outputs (dvc repro precompute). Trains into a temporary
folder (the project's students are untouched) and reports the median step time after the first step.
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


def step_times(overrides: list[str], method: str, steps: int, mode: str, work: Path) -> list[float]:
    part = {"semantic": "semantic", "detail": "detail"}.get(method, "baseline")
    cfg = load_config(REPO / "params.yaml", [
        *overrides, f"distill.teacher_mode={mode}", f"distill.{part}.steps={steps}", f"distill.{part}.log_every=1",
        f"distill.{part}.checkpoint_every={steps}", f"distill.checkpoint_dir={work / mode / 'ckpt'}",
        f"distill.out_dir={work / 'students'}", "distill.sample_prompts=1"])
    stamps: list[float] = []
    run_distill_stage(cfg, method, on_log=lambda step, metrics: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--methods", default="semantic,detail")
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    apply_runtime_defaults(REPO)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86_64'}, {torch.get_num_threads()} threads)"
    print(f"machine: {device}; overrides: {args.overrides}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for method in args.methods.split(","):
            results = {}
            for mode in ("online", "trajectory"):
                # the detail stage starts from the semantic expert: train one (same mode) first
                if method == "detail":
                    step_times(args.overrides, "semantic", 2, mode, work / "semantic-first")
                results[mode] = statistics.median(step_times(args.overrides, method, args.steps, mode, work))
            print(f"{method}: online {results['online'] * 1000:.0f} ms/step, trajectory "
                  f"{results['trajectory'] * 1000:.0f} ms/step, online/trajectory = "
                  f"{results['online'] / results['trajectory']:.2f}×")


if __name__ == "__main__":
    main()
