"""Integration: your own videos through every stage, as README "Your own videos" says — real sample videos
plus clips encoded here, `dcm pipeline` (dvc repro + promotion) to a promoted champion, then `dcm generate`.
No ground truth: the judge never runs; the teacher, the evaluation and the gate use what needs none."""

from __future__ import annotations

import pytest

from dcm.io import read_json
from tests.footage import decoded_frames, fill_videos, use_videos
from tests.project import copy_project, run_in

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_own_videos_reach_a_promoted_champion_and_generate_a_clip(tmp_path):
    project = copy_project(tmp_path / "project")
    captions = fill_videos(project / "videos")
    use_videos(project, {})

    done = run_in(project, "dcm", "pipeline")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dcm-toy version 1: promoted to champion" in done.stdout
    assert "gate of data.source videos" in done.stdout

    shards = read_json(project / "data" / "shards" / "manifest.json")
    assert shards["source"] == "videos" and shards["splits"]["val"]["samples"] > 0
    assert [s["path"] for s in shards["skipped"]] == ["broken.mp4"]
    assert shards["splits"]["train"]["samples"] + shards["splits"]["val"]["samples"] == 2 * len(captions)

    teacher = read_json(project / "data" / "teacher" / "metrics.json")
    assert "final_loss" in teacher and "mmd_vs_real" in teacher and not any(k.startswith("judge") for k in teacher)
    assert (project / "data" / "teacher" / "loss.png").is_file() and (project / "data" / "teacher" / "samples.png").is_file()

    evaluation = read_json(project / "data" / "eval" / "metrics.json")
    for row in ("dcm_4", "dcm_8"):
        assert {"ssim_vs_teacher", "psnr_vs_teacher", "temporal_flicker", "oversaturated_fraction", "mmd_vs_real",
                "speedup"} <= set(evaluation[row])
        assert not any(k.startswith("judge") for k in evaluation[row])

    out = tmp_path / "clip.mp4"
    generated = run_in(project, "dcm", "generate", captions["bikes.mp4"], "--out", str(out))
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert decoded_frames(out) == 4  # the tiny profile's data.frames
    status = run_in(project, "dcm", "status")
    assert "MMD² to held-out clips" in status.stdout and "champion version 1" in status.stdout, status.stdout
