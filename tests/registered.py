"""A tiny distilled and evaluated student, and registering it with chosen metrics: what the registry and demo
tests start from."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcm.ops.registry import register_challenger
from dcm.ops.tracking import stage_run
from dcm.stages.distill import run_distill_stage
from dcm.stages.evaluate import run_evaluate_stage

EVALUATED = ("evaluate.prompts=2", "evaluate.latency_repeats=1", "evaluate.student_steps=[4]")


@pytest.fixture
def distilled(config):
    cfg = config(*EVALUATED)
    run_distill_stage(cfg, "semantic")
    run_distill_stage(cfg, "detail")
    return cfg


@pytest.fixture
def evaluated(distilled):
    run_evaluate_stage(distilled)
    return distilled


def register(cfg, judge: float) -> int:
    with stage_run(cfg.tracking, "register", {}):
        return register_challenger(cfg, Path(cfg.distill.out_dir) / "dcm", {"dcm_4": {
            "judge_overall": judge, "ssim_vs_teacher": 0.5, "oversaturated_fraction": 0.1, "speedup": 10.0}},
            {"git_commit": "test"})["version"]
