"""Shard stage on the shapes domain: byte-identical output, resume, stale cleanup, and the reader."""

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dcm.data.reader import decode_sample, make_dataset, read_shard
from dcm.data.shapes import make_sample
from dcm.data.sharding import plan_shards, write_shard
from dcm.stages.shard import run_shard_stage
from dcm.errors import StageError
from dcm.io import read_json

pytestmark = pytest.mark.fast


def shard_hashes(manifest):
    return {s["name"]: s["sha256"] for split in manifest["splits"].values() for s in split["shards"]}


def test_same_params_give_byte_identical_shards(tmp_path, make_config):
    first = run_shard_stage(make_config(), out_dir=tmp_path / "a")
    second = run_shard_stage(make_config(), out_dir=tmp_path / "b")
    assert shard_hashes(first) == shard_hashes(second) and len(shard_hashes(first)) == 4
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    for name in shard_hashes(first):
        split = name.split("-")[0]
        assert (tmp_path / "a" / split / f"{name}.tar").read_bytes() == (tmp_path / "b" / split / f"{name}.tar").read_bytes()


def test_a_data_param_changes_the_shards(tmp_path, make_config):
    base = run_shard_stage(make_config(), out_dir=tmp_path / "a")
    other = run_shard_stage(make_config("seed=1"), out_dir=tmp_path / "b")
    assert set(shard_hashes(base).values()).isdisjoint(shard_hashes(other).values())


def test_rerun_reuses_finished_shards_and_redoes_broken_ones(tmp_path, make_config):
    cfg = make_config()
    out = Path(cfg.shard.dir)
    original = run_shard_stage(cfg)
    (out / "train" / "train-000001.tar").unlink()  # a shard lost
    (out / "train" / "train-000002.tar").write_bytes(b"half a shard")  # a shard cut short
    jobs, _ = plan_shards(cfg)
    results = [write_shard(job, cfg, out) for job in jobs]
    assert [r.reused for r in results] == [True, False, False, True]
    assert shard_hashes(run_shard_stage(cfg)) == shard_hashes(original)


def test_a_smaller_dataset_removes_stale_shards(tmp_path, make_config):
    run_shard_stage(make_config())
    manifest = run_shard_stage(make_config("data.shapes.train_samples=5"))
    assert sorted(p.name for p in (Path(make_config().shard.dir) / "train").iterdir()) == [
        "train-000000.json", "train-000000.tar"]
    assert manifest["removed_stale"] == ["train-000001.json", "train-000001.tar", "train-000002.json",
                                         "train-000002.tar"]


def test_manifest_records_counts_hashes_and_stats(tmp_path, make_config):
    manifest = run_shard_stage(make_config())
    assert manifest["splits"]["train"]["samples"] == 24 and manifest["splits"]["val"]["samples"] == 8
    assert sum(manifest["stats"]["attributes"]["shape"].values()) == 32
    assert len(manifest["stats"]["pixel_mean"]) == 3
    on_disk = read_json(Path(make_config().shard.dir) / "manifest.json")
    assert on_disk["splits"] == manifest["splits"]


def test_reader_returns_exactly_what_the_generator_made(tmp_path, make_config):
    cfg = make_config()
    run_shard_stage(cfg)
    samples = list(make_dataset(cfg.shard.dir, "train"))
    assert [s["key"] for s in samples] == [f"train-{i:08d}" for i in range(24)]
    for sample in samples[:5]:
        meta, clip = make_sample(cfg.seed, "train", sample["meta"]["index"], cfg.data)
        assert np.array_equal(sample["clip"], clip)  # lossless
        assert sample["caption"] == meta.caption


def test_shuffle_buffer_is_seeded_and_complete(tmp_path, make_config):
    cfg = make_config()
    run_shard_stage(cfg)
    a = [s["key"] for s in make_dataset(cfg.shard.dir, "train", shuffle_buffer=16, seed=3)]
    b = [s["key"] for s in make_dataset(cfg.shard.dir, "train", shuffle_buffer=16, seed=3)]
    assert a == b and sorted(a) == [f"train-{i:08d}" for i in range(24)] and a != sorted(a)


def test_ranks_read_disjoint_shards_that_cover_the_split(tmp_path, make_config, monkeypatch):
    cfg = make_config()
    run_shard_stage(cfg)
    seen = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        seen.append({s["key"] for s in make_dataset(cfg.shard.dir, "train")})
    assert all(len(keys) > 0 for keys in seen)
    assert set.union(*seen) == {f"train-{i:08d}" for i in range(24)}
    assert sum(len(keys) for keys in seen) == 24


def test_dataloader_workers_split_the_shards(tmp_path, make_config):
    cfg = make_config()
    run_shard_stage(cfg)
    loader = torch.utils.data.DataLoader(make_dataset(cfg.shard.dir, "train"), batch_size=None, num_workers=2,
                                         collate_fn=lambda s: s["key"])
    keys = list(loader)
    assert sorted(keys) == [f"train-{i:08d}" for i in range(24)]


def test_resampled_stream_does_not_end(tmp_path, make_config):
    cfg = make_config()
    run_shard_stage(cfg)
    stream = iter(make_dataset(cfg.shard.dir, "train", resample=True, seed=0))
    assert len([next(stream)["key"] for _ in range(60)]) == 60  # more than the 24 samples stored


def test_reader_names_a_missing_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the shard stage first"):
        make_dataset(tmp_path, "train")


def test_corrupt_sample_is_reported_with_its_key(tmp_path, make_config):
    cfg = make_config()
    run_shard_stage(cfg)
    path = Path(cfg.shard.dir) / "val" / "val-000000.tar"
    members = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            members.append((member, tar.extractfile(member).read()))
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            if member.name.endswith("clip.png") and "val-00000001" in member.name:
                data = b"\x89PNG garbage"
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(StageError, match="does not match the sha256"):  # the manifest's record catches it first
        list(make_dataset(cfg.shard.dir, "val"))
    with pytest.raises(ValueError, match="val-00000001"):  # and the decoder names the sample itself
        [decode_sample(raw) for raw in read_shard(path)]
    assert os.path.exists(path)
