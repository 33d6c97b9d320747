"""Integration: your own videos distilled from a real-family teacher — a tiny random Wan2.1 folder (the real
diffusers and transformers classes, built here, nothing downloaded) — through every stage to a promoted
champion, then `dcm generate` from it."""

from __future__ import annotations

import pytest

from dcm.io import read_json
from tests.footage import decoded_frames, fill_videos, use_videos
from tests.project import copy_project, run_in
from tests.test_families import build_wan

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

# Wan's causal VAE takes 1 + 4k frames and its ÷8 compression with a 2×2 patch needs multiples of 16 pixels.
WAN_GEOMETRY = {"data.frames": 5, "data.height": 16, "data.width": 16}


def test_own_videos_with_a_wan_teacher_reach_a_promoted_champion(tmp_path):
    project = copy_project(tmp_path / "project")
    captions = fill_videos(project / "videos")
    build_wan(project / "teachers" / "wan-tiny")
    use_videos(project, {"teacher.family": "wan", "teacher.path": "teachers/wan-tiny", "teacher.max_text_tokens": 8,
                         **WAN_GEOMETRY})

    done = run_in(project, "dcm", "pipeline")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dcm-wan version 1: promoted to champion" in done.stdout

    teacher = read_json(project / "data" / "teacher" / "manifest.json")
    assert teacher["family"] == "wan" and teacher["path"].endswith("teachers/wan-tiny")
    evaluation = read_json(project / "data" / "eval" / "metrics.json")
    assert {"ssim_vs_teacher", "mmd_vs_real", "temporal_flicker"} <= set(evaluation["dcm_4"])
    assert not any(k.startswith("judge") for k in evaluation["dcm_4"])

    out = tmp_path / "clip.mp4"
    generated = run_in(project, "dcm", "generate", captions["bar-right.mp4"], "--out", str(out))
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert decoded_frames(out) == 5

    refused = run_in(project, "dcm", "generate", "anything", "-S", "data.height=40", "--out", str(tmp_path / "x.mp4"))
    assert refused.returncode == 2 and "data.height=40 (a multiple of 16: 32 or 48)" in refused.stderr, refused.stderr
