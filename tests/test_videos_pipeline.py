"""Integration: your own videos distilled from a real-family teacher — a tiny random Wan2.1 folder (the real
diffusers and transformers classes, built here, nothing downloaded) — through every stage to a promoted
champion, then `dcm generate` from it, and the exported student loaded by stock diffusers' WanPipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dcm.io import read_json
from dcm.pipeline import DCMPipeline
from dcm.schedule import inference_sigmas
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

    assert_stock_wan_pipeline_matches(project / "data" / "students" / "dcm", tmp_path, captions["bar-right.mp4"])


# Runs in a fresh interpreter: stock diffusers only, and proof that nothing of dcm was imported.
STOCK_SCRIPT = """
import sys, json, numpy as np, torch
from diffusers import WanPipeline
folder, latents, prompt, out = sys.argv[1:5]
pipe = WanPipeline.from_pretrained(folder)
frames = pipe(prompt, num_inference_steps=4, guidance_scale=1.0, num_frames=5, height=16, width=16,
              latents=torch.from_numpy(np.load(latents)), max_sequence_length=8, output_type="np").frames
np.save(out, frames)
print(json.dumps({"dcm_imported": any(m == "dcm" or m.startswith("dcm.") for m in sys.modules),
                  "experts": [type(pipe.transformer).__name__, type(pipe.transformer_2).__name__],
                  "boundary_ratio": pipe.config.boundary_ratio}))
"""


def assert_stock_wan_pipeline_matches(folder, tmp_path, prompt: str) -> None:
    """The Must-show of the stock export: WanPipeline, in a process that never imports dcm, makes the frames
    DCMPipeline makes from the same latents at the scheduler's placement; a model card; no links."""
    assert not [p for p in folder.rglob("*") if p.is_symlink()]
    card = (folder / "README.md").read_text()
    assert "WanPipeline.from_pretrained" in card and "guidance_scale=1.0" in card and "| final_loss_4_steps |" in card
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "WanPipeline"
    pipe = DCMPipeline.from_pretrained(folder, detail_weights="adapter")
    latents = torch.randn((1, *pipe.family.latent_shape(5, 16, 16)), generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "latents.npy", latents.numpy())
    stock = subprocess.run([sys.executable, "-c", STOCK_SCRIPT, str(folder), str(tmp_path / "latents.npy"), prompt,
                            str(tmp_path / "stock.npy")], capture_output=True, text=True, cwd=tmp_path)
    assert stock.returncode == 0, stock.stderr[-3000:]
    report = json.loads(stock.stdout.strip().splitlines()[-1])
    assert report == {"dcm_imported": False, "experts": ["WanTransformer3DModel"] * 2,
                      "boundary_ratio": pipe.info["threshold"]}
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(4)
    ours = pipe(prompt, num_inference_steps=4, latents=latents, sigmas=scheduler.sigmas[:-1].tolist()).frames
    theirs = np.load(tmp_path / "stock.npy")
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= 1e-4, np.abs(theirs - ours).max()
    # the stock placement starts the third step on the expert switch, as DCM's own 4-step sampler does
    native = inference_sigmas(pipe.schedule, 4, pipe.edges)
    assert abs(float(scheduler.sigmas[2]) - float(native[2])) < 1e-6
    assert float(scheduler.sigmas[1]) > pipe.info["threshold"] > float(scheduler.sigmas[2])
