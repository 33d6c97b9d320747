"""Read shards back: decoded clips, shuffled with a buffer, split by node (rank) and DataLoader worker.

Samples are decoded by our own function from raw bytes — WebDataset's automatic decoders are never
enabled, so nothing in a shard is ever unpickled, and a sample with members a shard never holds (a
`.pyd` or `.pth`, say) is refused unread. Every shard is checked against the sha256 its stage's manifest
recorded before it is read, so a file changed or damaged afterwards is refused by name.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import webdataset as wds

from dcm.data.clip_codec import decode_clip
from dcm.data.shardfiles import MANIFEST
from dcm.errors import StageError
from dcm.io import read_json, sha256_file

TAR_KEYS = {"__key__", "__url__", "__local_path__"}  # what WebDataset adds to every sample
CLIP_MEMBERS = {"clip.png", "caption.txt", "meta.json"}
_verified: set[tuple] = set()  # (path, size, mtime, sha256) already checked by this process


def verify_shard(path: str | Path, sha256: str) -> None:
    """Refuse a shard whose bytes are not the ones its manifest recorded (hashed once per process)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise StageError(f"{path} is listed in its manifest but missing: run `dvc repro` (or `dvc checkout`) "
                         "to restore it") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns, sha256)
    if key in _verified:
        return
    if sha256_file(path) != sha256:
        raise StageError(f"{path} does not match the sha256 its manifest recorded: it was changed or damaged after "
                         "its stage wrote it. Run `dvc repro` (the stage rewrites just that shard) or "
                         "`dvc checkout` to restore it")
    _verified.add(key)


def check_members(raw: dict, expected: set[str], what: str) -> None:
    """Refuse members this kind of sample never holds; they are never decoded (they may carry a pickle)."""
    unexpected = sorted(set(raw) - expected - TAR_KEYS)
    if unexpected:
        raise ValueError(f"{what} {raw.get('__key__', '?')} in {raw.get('__url__', '?')} holds members "
                         f"{unexpected} that no stage writes (only {sorted(expected)}); they were not read. "
                         "Rebuild the shard with its stage")


def shard_files(shard_dir: str | Path, split: str) -> list[str]:
    """The split's shards in manifest order, each checked against its recorded sha256; a missing manifest
    means the shard stage has not run. Serves the precompute stage's shards too (same manifest layout)."""
    shard_dir = Path(shard_dir)
    manifest_path = shard_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run the shard stage first (dvc repro shard)")
    manifest = read_json(manifest_path)
    if split not in manifest["splits"]:
        raise KeyError(f"split {split!r} not in {manifest_path}; it has {sorted(manifest['splits'])}")
    entries = [entry for entry in manifest["splits"][split]["shards"] if entry["samples"]]
    for entry in entries:
        verify_shard(shard_dir / entry["path"], entry["sha256"])
    return [str(shard_dir / entry["path"]) for entry in entries]


def decode_sample(raw: dict) -> dict:
    """Raw tar members → {"key", "clip" (uint8 T×H×W×3), "caption", "meta"}; names the key on failure."""
    key = raw.get("__key__", "?")
    check_members(raw, CLIP_MEMBERS, "sample")
    try:
        meta = json.loads(raw["meta.json"])
        clip = decode_clip(raw["clip.png"], int(meta["frames"]))
        caption = raw["caption.txt"].decode("utf-8")
    except (KeyError, ValueError, OSError) as error:
        raise ValueError(f"sample {key} in {raw.get('__url__', '?')} is corrupt: {error}") from error
    return {"key": key, "clip": clip, "caption": caption, "meta": meta}


def make_dataset(shard_dir: str | Path, split: str, *, shuffle_buffer: int = 0, seed: int = 0,
                 resample: bool = False, decode=decode_sample, split_by_rank: bool = True) -> wds.WebDataset:
    """An iterable of decoded samples.

    Each rank (RANK/WORLD_SIZE or torch.distributed; unless `split_by_rank=False`) and each DataLoader
    worker reads a disjoint subset of shards. `resample=True` draws shards with replacement forever: the mode for training
    with a fixed number of steps, where every rank must see the same number of batches. `decode=None`
    yields the raw tar members (cheap to skip over when resuming).
    """
    files = shard_files(shard_dir, split)
    if not files:
        raise ValueError(f"split {split!r} in {shard_dir} has no samples")
    dataset = wds.WebDataset(files, resampled=resample, shardshuffle=False if resample or not shuffle_buffer
                             else len(files), nodesplitter=wds.split_by_node if split_by_rank else None,
                             workersplitter=wds.split_by_worker, seed=seed, empty_check=False)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, rng=random.Random(seed))
    return dataset.map(decode) if decode else dataset


def read_shard(path: str | Path) -> wds.WebDataset:
    """Raw samples of one shard in stored order: no shuffling, no splitting across ranks or workers."""
    return wds.WebDataset([str(path)], shardshuffle=False, nodesplitter=None, workersplitter=None,
                          empty_check=False)
