"""Damaged and hostile inputs past the video ingest (tests/test_ingest.py covers the videos themselves):
a changed shard, a damaged checkpoint, non-finite latents, and pickle payloads in a checkpoint, a sample
and a model folder. Each is refused with a message naming the input and the fix, nothing in it is
executed, and the work already done stays on disk."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from dcm.data.reader import decode_sample, make_dataset, read_shard
from dcm.stages.shard import run_shard_stage
from dcm.errors import StageError
from dcm.io import read_json, sha256_file, write_json_atomic
from dcm.stages.precompute import run_precompute_stage
from dcm.train.checkpoint import SHARDS, checkpoint_tensors, latest_checkpoint
from dcm.stages.distill import run_distill_stage
from dcm.stages.teacher import load_teacher, run_teacher_stage
from tests.conftest import TINY_TEACHER

pytestmark = pytest.mark.fast


class Payload:
    """Unpickling this creates `marker`: proof that a loader executed a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def pickled(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": Payload(marker)}, buffer)
    return buffer.getvalue()


def rewrite_shard(path: Path, change) -> None:
    """Rewrite a tar shard, passing each sample's members (name → bytes) through `change`."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    samples: dict[str, dict[str, bytes]] = {}
    for member, data in members:
        key, _, suffix = member.name.partition(".")
        samples.setdefault(key, {})[suffix] = data
    with tarfile.open(path, "w") as tar:
        for key, parts in samples.items():
            for suffix, data in change(key, dict(parts)).items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def reseal(stage_dir: Path, shard: Path) -> None:
    """Record a rewritten shard's bytes in its stage manifest, as if the stage itself had written them."""
    manifest = read_json(stage_dir / "manifest.json")
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            if stage_dir / entry["path"] == shard:
                entry["sha256"], entry["bytes"] = sha256_file(shard), shard.stat().st_size
    write_json_atomic(stage_dir / "manifest.json", manifest)


def test_a_shard_changed_after_its_stage_is_refused_and_rebuilt(tmp_path, make_config):
    cfg = make_config()
    run_shard_stage(cfg)
    shard = Path(cfg.shard.dir) / "train" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, as a failing disk would leave it
    shard.write_bytes(bytes(data))
    with pytest.raises(StageError, match=r"train-000001\.tar.*sha256.*dvc repro"):
        list(make_dataset(cfg.shard.dir, "train"))
    run_shard_stage(cfg)  # the fix the message names: the stage rebuilds that shard, and only that one
    assert sum(1 for _ in make_dataset(cfg.shard.dir, "train")) == 24


def test_members_a_shard_never_holds_are_refused_unread(tmp_path, make_config):
    cfg = make_config()
    run_shard_stage(cfg)
    shard = Path(cfg.shard.dir) / "val" / "val-000000.tar"
    marker = tmp_path / "executed"
    rewrite_shard(shard, lambda key, parts: {**parts, "weights.pth": pickled(marker), "extra.pyd": pickle.dumps(
        Payload(marker))})
    raw = next(iter(read_shard(shard)))
    with pytest.raises(ValueError, match=r"extra\.pyd.*weights\.pth"):
        decode_sample(raw)
    assert not marker.exists()


def test_damaged_and_pickled_checkpoints_are_refused(tmp_path, make_config):
    cfg = make_config(*TINY_TEACHER)
    run_shard_stage(cfg)
    run_teacher_stage(cfg)
    newest = latest_checkpoint(Path(cfg.teacher.checkpoint_dir))
    longer = make_config(*TINY_TEACHER, "teacher.toy.train.steps=6")

    weights = next((newest / SHARDS).glob("*.safetensors"))
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(StageError, match=rf"checkpoint {newest}.*damaged.*delete that folder"):
        run_teacher_stage(longer)

    marker = tmp_path / "executed"
    weights.write_bytes(pickled(marker))  # a torch.save pickle under the safetensors name
    with pytest.raises(StageError, match="damaged"):
        run_teacher_stage(longer)
    assert not marker.exists()
    assert newest.is_dir()  # refused, not deleted: the user decides


def test_a_pickled_model_folder_is_refused(tmp_path, make_config):
    cfg = make_config(*TINY_TEACHER)
    run_shard_stage(cfg)
    run_teacher_stage(cfg)
    folder = Path(cfg.teacher.out_dir) / "model" / "transformer"
    weights = folder / "diffusion_pytorch_model.safetensors"
    marker = tmp_path / "executed"
    weights.unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(pickled(marker))  # what older checkpoints ship
    with pytest.raises(StageError, match=r"safetensors"):
        load_teacher(cfg)
    assert not marker.exists()


def test_non_finite_latents_are_refused_with_the_sample_named(tmp_path, config):
    cfg = config()
    latents_dir = Path(cfg.precompute.dir)
    shard = latents_dir / "train" / "train-000000.tar"
    saved = shard.read_bytes(), (latents_dir / "manifest.json").read_bytes()
    victim = []

    def poison(key: str, parts: dict[str, bytes]) -> dict[str, bytes]:
        if not victim:
            tensors = load_tensors(parts["tensors.safetensors"])
            tensors["latents"][0, 0, 0, 0] = float("nan")
            parts["tensors.safetensors"] = save_tensors(tensors)
            victim.append(key)
        return parts

    try:
        rewrite_shard(shard, poison)
        reseal(latents_dir, shard)
        with pytest.raises(StageError, match=rf"{victim[0]}.*non-finite.*latents"):
            run_distill_stage(cfg, "semantic")
    finally:  # the precompute output is shared by the module's tests
        shard.write_bytes(saved[0])
        (latents_dir / "manifest.json").write_bytes(saved[1])


def test_precompute_refuses_a_teacher_that_gives_non_finite_latents(tmp_path, make_config, monkeypatch):
    cfg = make_config(*TINY_TEACHER)
    run_shard_stage(cfg)
    run_teacher_stage(cfg)
    from dcm.models.toy import ToyFamily
    encode = ToyFamily.encode_video  # a diverged teacher, injected: its latents come out infinite
    monkeypatch.setattr(ToyFamily, "encode_video", lambda self, video: encode(self, video) * float("inf"))
    with pytest.raises(StageError, match=r"non-finite.*latents"):
        run_precompute_stage(cfg)
    assert not (Path(cfg.precompute.dir) / "manifest.json").exists()


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(make_config):
    cfg = make_config(*TINY_TEACHER, "teacher.toy.train.lr=1e30", "teacher.toy.train.warmup_steps=0",
                      "teacher.toy.train.checkpoint_every=1", "teacher.toy.train.grad_clip=1e30")
    run_shard_stage(cfg)
    with pytest.raises(StageError, match=r"became (nan|inf).*at step \d+; the last good checkpoint .* is kept"):
        run_teacher_stage(cfg)
    last = latest_checkpoint(Path(cfg.teacher.checkpoint_dir))
    assert last is not None
    weights = checkpoint_tensors(last)
    assert weights and all(torch.isfinite(value).all() for value in weights.values())  # nothing non-finite saved
