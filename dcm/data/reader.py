"""Read shards back: decoded clips, shuffled with a buffer, split by node (rank) and DataLoader worker.

Samples are decoded by our own function from raw bytes — WebDataset's automatic decoders are never
enabled, so nothing in a shard is ever unpickled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import webdataset as wds

from dcm.data.clip_codec import decode_clip
from dcm.data.sharding import MANIFEST
from dcm.io import read_json


def shard_files(shard_dir: str | Path, split: str) -> list[str]:
    """The split's shards in manifest order; a missing manifest means the shard stage has not run."""
    shard_dir = Path(shard_dir)
    manifest_path = shard_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run the shard stage first (dvc repro shard)")
    manifest = read_json(manifest_path)
    if split not in manifest["splits"]:
        raise KeyError(f"split {split!r} not in {manifest_path}; it has {sorted(manifest['splits'])}")
    return [str(shard_dir / entry["path"]) for entry in manifest["splits"][split]["shards"] if entry["samples"]]


def decode_sample(raw: dict) -> dict:
    """Raw tar members → {"key", "clip" (uint8 T×H×W×3), "caption", "meta"}; names the key on failure."""
    key = raw.get("__key__", "?")
    try:
        meta = json.loads(raw["meta.json"])
        clip = decode_clip(raw["clip.png"], int(meta["frames"]))
        caption = raw["caption.txt"].decode("utf-8")
    except (KeyError, ValueError, OSError) as error:
        raise ValueError(f"sample {key} in {raw.get('__url__', '?')} is corrupt: {error}") from error
    return {"key": key, "clip": clip, "caption": caption, "meta": meta}


def make_dataset(shard_dir: str | Path, split: str, *, shuffle_buffer: int = 0, seed: int = 0,
                 resample: bool = False, decode=decode_sample) -> wds.WebDataset:
    """An iterable of decoded samples.

    Each rank (RANK/WORLD_SIZE or torch.distributed) and each DataLoader worker reads a disjoint
    subset of shards. `resample=True` draws shards with replacement forever: the mode for training
    with a fixed number of steps, where every rank must see the same number of batches. `decode=None`
    yields the raw tar members (cheap to skip over when resuming).
    """
    files = shard_files(shard_dir, split)
    if not files:
        raise ValueError(f"split {split!r} in {shard_dir} has no samples")
    dataset = wds.WebDataset(files, resampled=resample, shardshuffle=False if resample or not shuffle_buffer
                             else len(files), nodesplitter=wds.split_by_node,
                             workersplitter=wds.split_by_worker, seed=seed, empty_check=False)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, rng=random.Random(seed))
    return dataset.map(decode) if decode else dataset


def read_shard(path: str | Path) -> wds.WebDataset:
    """Raw samples of one shard in stored order: no shuffling, no splitting across ranks or workers."""
    return wds.WebDataset([str(path)], shardshuffle=False, nodesplitter=None, workersplitter=None,
                          empty_check=False)
