"""Precompute: what it stores, exact kill/resume, rank splitting, and trajectory consistency."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_tensors

from dcm.config import load_config
from dcm.data.reader import read_shard
from dcm.stages.shard import run_shard_stage
from dcm.io import read_json
from dcm.stages.precompute import run_precompute_stage
from dcm.sampling import guided_velocity
from dcm.schedule import euler_nodes, euler_step
from dcm.stages.teacher import load_teacher, run_teacher_stage
from tests.conftest import REPO, TINY_TEACHER

pytestmark = pytest.mark.fast

MORE_SHARDS = ["data.shapes.train_samples=60", "precompute.trajectories_per_shard=null", "schedule.euler_nodes=50"]


def module_config(root: Path, *extra: str):
    """make_config's sizes for fixtures shared by the module's tests."""
    return load_config(REPO / "params.yaml", [
        f"shard.dir={root / 'shards'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}", "data.shapes.val_samples=8",
        "shard.samples_per_shard=10", f"teacher.out_dir={root / 'teacher'}",
        f"teacher.checkpoint_dir={root / 'ckpt-teacher'}", *TINY_TEACHER, *MORE_SHARDS, *extra])


@pytest.fixture(scope="module")
def teacher_root(tmp_path_factory):
    """Shards and a tiny teacher, once for the module; every test precomputes into its own folder."""
    root = tmp_path_factory.mktemp("precompute")
    cfg = module_config(root, f"precompute.dir={root / 'latents'}")
    run_shard_stage(cfg)
    run_teacher_stage(cfg)
    return root


@pytest.fixture(scope="module")
def precomputed(teacher_root):
    """One finished precompute (60 trajectories of 50 nodes: the expensive part), read by several tests."""
    cfg = module_config(teacher_root, f"precompute.dir={teacher_root / 'latents'}")
    run_precompute_stage(cfg)
    return cfg


@pytest.fixture
def trained(teacher_root, tmp_path):
    return module_config(teacher_root, f"precompute.dir={tmp_path / 'latents'}")


def shard_hashes(out_dir):
    return {p.name: p.read_bytes() for p in sorted(Path(out_dir).rglob("*.tar"))}


def test_stored_tensors_and_manifest(precomputed):
    trained = precomputed
    manifest = run_precompute_stage(trained)  # every shard reused: the manifest of the finished run
    assert manifest["splits"]["train"]["samples"] == 60 and manifest["splits"]["train"]["trajectories"] == 60
    sample = next(iter(read_shard(Path(trained.precompute.dir) / "train" / "train-000000.tar")))
    tensors = load_tensors(sample["tensors.safetensors"])
    assert tensors["latents"].shape == (3, 4, 16, 16)
    assert tensors["trajectory"].shape == (50, 3, 4, 16, 16) and tensors["trajectory_nodes"][0] == 49
    assert tensors["text.embeds"].shape == (16, 16) and tensors["text.mask"].dtype == torch.bool
    assert (Path(trained.precompute.dir) / "negative_prompt.safetensors").is_file()


def test_one_teacher_step_from_a_stored_node_gives_the_next_one(precomputed):
    trained = precomputed
    teacher = load_teacher(trained)
    sample = next(iter(read_shard(Path(trained.precompute.dir) / "val" / "val-000000.tar")))
    tensors = load_tensors(sample["tensors.safetensors"])
    nodes, states = tensors["trajectory_nodes"].tolist(), tensors["trajectory"]
    sigmas = euler_nodes(trained.schedule)
    cond = {"embeds": tensors["text.embeds"][None], "mask": tensors["text.mask"][None]}
    uncond = teacher.encode_prompts([trained.teacher.negative_prompt])
    for i in (0, 20, 48):  # from node nodes[i] to node nodes[i + 1] = nodes[i] − 1
        sigma, sigma_next = sigmas[nodes[i]], sigmas[nodes[i + 1]]
        with torch.no_grad():
            v = guided_velocity(teacher, states[i][None], sigma.float().view(1), cond, uncond,
                                trained.teacher.sampling.guidance_scale)
        stepped = euler_step(states[i][None].float(), v.float(), sigma, sigma_next)[0]
        assert torch.allclose(stepped, states[i + 1], atol=1e-4), (i, (stepped - states[i + 1]).abs().max())


@pytest.mark.integration
def test_killed_run_continues_to_identical_output(trained, precomputed):
    reference = Path(precomputed.precompute.dir)  # an uninterrupted run of the same config
    overrides = [f"shard.dir={trained.shard.dir}", f"teacher.out_dir={trained.teacher.out_dir}",
                 f"precompute.dir={trained.precompute.dir}", *TINY_TEACHER, *MORE_SHARDS]
    code = ("import sys; from dcm.config import load_config; from dcm.stages.precompute import run_precompute_stage; "
            f"run_precompute_stage(load_config({str(REPO / 'params.yaml')!r}, sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", code, *overrides], start_new_session=True)
    out = Path(trained.precompute.dir)
    deadline = time.monotonic() + 120
    while not list(out.glob("train/*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = list(out.glob("*/*.json"))
    assert 0 < len(finished) < 7, "the kill must land mid-run for this test to mean anything"
    assert not (out / "manifest.json").exists()
    manifest = run_precompute_stage(trained)  # continues
    assert shard_hashes(out) == shard_hashes(reference)
    assert manifest["splits"] == read_json(reference / "manifest.json")["splits"]


@pytest.mark.integration  # a whole second precompute: too slow for the edit loop
def test_ranks_split_the_shards_and_rank_zero_writes_the_manifest(trained):
    assert run_precompute_stage(trained, rank=1, world=2) is None
    out = Path(trained.precompute.dir)
    mine = sorted(p.stem for p in out.glob("*/*.json"))
    assert mine == ["train-000001", "train-000003", "train-000005"]
    manifest = run_precompute_stage(trained, rank=0, world=2)
    assert manifest["splits"]["train"]["samples"] == 60
