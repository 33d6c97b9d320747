"""Stage `evaluate` on the tiny pipeline: every model from the same noise, all metrics, the report files."""

import json

import pytest

from dcm.errors import StageError
from dcm.eval.evaluate import run_evaluate_stage
from dcm.train.distill import run_distill_stage


def test_evaluation_compares_teacher_dcm_and_baselines(config):
    cfg = config("evaluate.prompts=3", "evaluate.latency_repeats=1", "evaluate.student_steps=[1,4]",
                 "evaluate.grid_prompts=2")
    for method in ("semantic", "detail", "lcm"):
        run_distill_stage(cfg, method)
    result = run_evaluate_stage(cfg)
    metrics = json.loads((result["files"]["report"].parent / "metrics.json").read_text())
    assert {"teacher_6", "dcm_1", "dcm_4", "lcm_1", "lcm_4"} <= set(metrics)
    assert "pcm_4" not in metrics  # no pcm folder, no pcm row
    for key in ("judge_overall", "judge_colour", "psnr_vs_teacher", "ssim_vs_teacher", "saturation_mean",
                "oversaturated_fraction", "latency_s", "speedup"):
        assert key in metrics["dcm_4"], key
    assert "psnr_vs_teacher" not in metrics["teacher_6"] and metrics["teacher_6"]["speedup"] == 1.0
    assert 0 <= metrics["dcm_4"]["judge_overall"] <= 1 and -1 <= metrics["dcm_4"]["ssim_vs_teacher"] <= 1
    report = result["files"]["report"].read_text()
    assert "| dcm | 4 |" in report and "| teacher | 6 |" in report
    assert {"grid", "table", "judge_overall", "speedup"} <= set(result["files"])
    assert all(path.stat().st_size > 0 for path in result["files"].values())


def test_evaluation_needs_the_dcm_student(config):
    with pytest.raises(StageError, match="run the distill stages first"):
        run_evaluate_stage(config())
