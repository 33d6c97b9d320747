"""Stage `evaluate` on the tiny pipeline: every model from the same noise, all metrics, the report files."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dcm.config import ConfigError
from dcm.errors import StageError
from dcm.stages.evaluate import run_evaluate_stage
from dcm.eval.fidelity import temporal_flicker
from dcm.eval.prompts import evaluation_prompts
from dcm.eval.vbench_scores import upscale
from dcm.eval.vbench_weights import write_stand_ins
from dcm.stages.distill import run_distill_stage

pytestmark = pytest.mark.fast


def test_evaluation_compares_teacher_dcm_and_baselines(config):
    cfg = config("evaluate.prompts=3", "evaluate.latency_repeats=1", "evaluate.student_steps=[1,4]",
                 "evaluate.grid_prompts=2", "distill.baselines=[pcm]")
    for method in ("semantic", "detail", "lcm", "pcm"):
        run_distill_stage(cfg, method)
    result = run_evaluate_stage(cfg)
    metrics = json.loads((result["files"]["report"].parent / "metrics.json").read_text())
    assert {"teacher_6", "dcm_1", "dcm_4", "pcm_1", "pcm_4", "pcm_reference_1", "pcm_reference_4"} <= set(metrics)
    assert "lcm_4" not in metrics  # trained but not listed in distill.baselines: no lcm row
    assert not any(key.startswith("dcm_reference") for key in metrics)  # the reference placement is PCM's alone
    # 10 nodes, 4 phases: the phase edges start the steps at nodes 9, 6, 4, 1, the reference's at 9, 7, 4, 2;
    # one step is node 9 either way, so those rows are the same clips
    assert metrics["pcm_reference_4"]["psnr_vs_teacher"] != metrics["pcm_4"]["psnr_vs_teacher"]
    assert metrics["pcm_reference_1"]["psnr_vs_teacher"] == metrics["pcm_1"]["psnr_vs_teacher"]
    for key in ("judge_overall", "judge_colour", "psnr_vs_teacher", "ssim_vs_teacher", "saturation_mean",
                "oversaturated_fraction", "patch_grid", "latency_s", "speedup"):
        assert key in metrics["dcm_4"], key
    assert all(metrics[row]["patch_grid"] >= 0 for row in ("teacher_6", "dcm_4"))  # the toy's 4-pixel patch
    assert "psnr_vs_teacher" not in metrics["teacher_6"] and metrics["teacher_6"]["speedup"] == 1.0
    assert 0 <= metrics["dcm_4"]["judge_overall"] <= 1 and -1 <= metrics["dcm_4"]["ssim_vs_teacher"] <= 1
    report = result["files"]["report"].read_text()
    assert "| dcm | 4 |" in report and "| teacher | 6 |" in report
    assert {"grid", "table", "judge_overall", "speedup"} <= set(result["files"])
    assert all(path.stat().st_size > 0 for path in result["files"].values())


def test_rerun_after_a_kill_reuses_finished_rows_and_redoes_the_rest(config, capsys):
    cfg = config("evaluate.prompts=2", "evaluate.latency_repeats=1", "evaluate.student_steps=[1,4]")
    run_distill_stage(cfg, "semantic")
    run_distill_stage(cfg, "detail")
    first = json.loads((run_evaluate_stage(cfg)["files"]["report"].parent / "metrics.json").read_text())
    rows = Path(cfg.evaluate.out_dir) / "rows"
    (rows / "dcm_4.json").unlink()  # as if killed while scoring dcm at 4 steps
    capsys.readouterr()
    second = run_evaluate_stage(cfg)["metrics"]
    reused = capsys.readouterr().out
    assert "teacher_6 reused" in reused and "dcm_1 reused" in reused and "dcm_4 reused" not in reused
    assert (rows / "dcm_4.json").is_file()
    for row in ("teacher_6", "dcm_1", "dcm_4"):
        assert second[row]["judge_overall"] == first[row]["judge_overall"], row
    assert second["dcm_1"]["latency_s"] == first["dcm_1"]["latency_s"]  # reused, not measured again

    lora = Path(cfg.distill.out_dir) / "dcm" / "detail" / "pytorch_lora_weights.safetensors"
    lora.write_bytes(lora.read_bytes()[:-4] + b"\0\0\0\0")  # other student bytes: its rows are stale
    capsys.readouterr()
    run_evaluate_stage(cfg)
    reused = capsys.readouterr().out
    assert "teacher_6 reused" in reused and "dcm_1 reused" not in reused


def test_evaluation_needs_the_dcm_student(config):
    with pytest.raises(StageError, match="run the distill stages first"):
        run_evaluate_stage(config())


def test_vbench_scores_land_in_metrics(config, tmp_path, monkeypatch):
    """The real vbench API: temporal_flickering computed for real, motion_smoothness and dynamic_degree on
    random stand-in weights at vbench's own paths (labelled meaningless)."""
    import vbench.utils
    monkeypatch.setattr(vbench.utils, "CACHE_DIR", str(tmp_path / "vbench-cache"))
    written = write_stand_ins(tmp_path / "vbench-cache")
    assert [p.name for p in written] == ["amt-s.pth", "raft-things.pth"]
    dims = ["temporal_flickering", "motion_smoothness", "dynamic_degree"]
    cfg = config("evaluate.prompts=2", "evaluate.latency_repeats=1", "evaluate.student_steps=[4]",
                 "evaluate.grid_prompts=1", f"evaluate.vbench.dimensions={json.dumps(dims)}")
    run_distill_stage(cfg, "semantic")
    run_distill_stage(cfg, "detail")
    result = run_evaluate_stage(cfg)
    metrics = json.loads((result["files"]["report"].parent / "metrics.json").read_text())
    for row in ("teacher_6", "dcm_4"):
        for dim in dims:
            assert 0 <= metrics[row][f"vbench_{dim}"] <= 1, (row, dim)
    assert metrics["vbench"]["meaningless_stand_in_weights"] == ["motion_smoothness", "dynamic_degree"]
    assert "vbench_motion_smoothness is meaningless" in result["files"]["report"].read_text()
    videos = sorted((tmp_path / "eval" / "vbench" / "dcm_4" / "videos").iterdir())
    assert [v.name for v in videos] == ["0000.mp4", "0001.mp4"]
    # temporal_flickering is plain arithmetic on the decoded frames: check it against our own decode
    capture, frames = cv2.VideoCapture(str(videos[0])), []
    while (frame := capture.read())[0]:
        frames.append(frame[1].astype(np.float32))
    expected = np.mean([np.abs(frames[i + 1] - frames[i]).mean() for i in range(len(frames) - 1)])
    per_video = json.loads((tmp_path / "eval" / "vbench" / "dcm_4" / "dcm_4_eval_results.json").read_text())
    first = [r for r in per_video["temporal_flickering"][1] if r["video_path"].endswith("0000.mp4")][0]
    assert len(frames) == cfg.data.frames and first["video_results"] == pytest.approx((255 - expected) / 255)
    # our own temporal_flicker (every evaluation row, no vbench needed) is vbench's formula: on the same
    # decoded frames it gives vbench's value (rows hold it on the clips as generated, before the codec)
    assert temporal_flicker(np.stack(frames)[None]) == pytest.approx(first["video_results"])
    assert all(0 < metrics[row]["temporal_flicker"] <= 1 for row in ("teacher_6", "dcm_4"))


def test_missing_vbench_weights_name_the_file(config, tmp_path, monkeypatch):
    import vbench.utils
    monkeypatch.setattr(vbench.utils, "CACHE_DIR", str(tmp_path / "empty"))
    cfg = config("evaluate.prompts=1", "evaluate.latency_repeats=1", "evaluate.student_steps=[4]",
                 "evaluate.vbench.dimensions=[dynamic_degree]")
    with pytest.raises(StageError, match=r"dynamic_degree: .*raft-things.pth.*VBENCH_CACHE_DIR"):
        run_evaluate_stage(cfg)


def test_upscale_reaches_the_minimum_side_by_an_integer_factor():
    clips = np.arange(2 * 3 * 20 * 30 * 3, dtype=np.uint8).reshape(2, 3, 20, 30, 3)
    big = upscale(clips, 64)  # ceil(64 / 20) = 4
    assert big.shape == (2, 3, 80, 120, 3)
    assert np.array_equal(big[:, :, ::4, ::4], clips) and np.array_equal(big[:, :, 3::4, 3::4], clips)
    assert upscale(clips, 16) is clips


def test_prompt_sources(config, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n\n  a blue square  \nthird\n")
    cfg = config("evaluate.prompt_source=file", f"evaluate.prompt_file={prompts}", "evaluate.prompts=2", "seed=7")
    assert evaluation_prompts(cfg) == [{"caption": "a red circle moving left", "seed": 7},
                                       {"caption": "a blue square", "seed": 8}]
    suite = evaluation_prompts(config("evaluate.prompt_source=vbench", "evaluate.prompts=3"))
    assert [p["caption"] for p in suite] == ["In a still frame, a stop sign", "a toilet, frozen in time",
                                             "a laptop, frozen in time"]  # VBench's temporal_flickering prompts
    with pytest.raises(StageError, match="missing.txt not found"):
        evaluation_prompts(config("evaluate.prompt_source=file", f"evaluate.prompt_file={tmp_path / 'missing.txt'}"))


@pytest.mark.parametrize("override, message", [
    ("evaluate.vbench.dimensions=[color]", "not available in custom_input mode"),
    ("evaluate.prompt_file=''", "evaluate.prompt_file"),
])
def test_bad_evaluation_settings_are_named(config, override, message):
    with pytest.raises(ConfigError, match=message):
        config(override)


def test_no_vbench_dimensions_need_no_vbench_package(monkeypatch):
    """A bare GPU box without vbench evaluates with evaluate.vbench.dimensions=[]."""
    from dcm.eval.vbench_weights import check_weights, stand_in_dimensions
    monkeypatch.setitem(sys.modules, "vbench", None)  # import vbench now raises ImportError
    monkeypatch.setitem(sys.modules, "vbench.utils", None)
    check_weights([])
    assert stand_in_dimensions([]) == []
    with pytest.raises(ImportError):
        check_weights(["temporal_flickering"])
