"""What every shard-writing stage shares: paths, the resume check, the deterministic writer, cleanup.

A shard `{split}-NNNNNN.tar` has a sidecar `{split}-NNNNNN.json` written after it, holding the
fingerprint of everything that determined its bytes and its sha256. A shard counts as finished only
when both exist and agree, so a killed run (or changed params) redoes exactly the shards it must.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import webdataset as wds

from dcm.io import read_json, remove_orphaned_temporaries, sha256_file

SPLITS = ("train", "val")
MANIFEST = "manifest.json"  # a shard folder's record: shards, counts, sha256 (every stage folder has one)
TAR_OWNER = "dcm"


def shard_paths(out_dir: Path, job_name: str) -> tuple[Path, Path]:
    split = job_name.split("-")[0]
    return out_dir / split / f"{job_name}.tar", out_dir / split / f"{job_name}.json"


def finished_sidecar(out_dir: Path, job_name: str, fingerprint: str) -> dict | None:
    """The sidecar of a finished shard made from the same fingerprint, else None."""
    tar_path, sidecar_path = shard_paths(out_dir, job_name)
    if not (tar_path.is_file() and sidecar_path.is_file()):
        return None
    try:
        previous = read_json(sidecar_path)
    except (json.JSONDecodeError, OSError):
        return None
    if previous.get("fingerprint") == fingerprint and previous.get("sha256") == sha256_file(tar_path):
        return previous
    return None


def shard_writer(handle, split: str, index: int) -> wds.ShardWriter:
    """A ShardWriter that writes exactly one shard into `handle` (an open temporary file).

    No count or size limit, so it never rolls over; fixed mtime/owner keep tar headers free of when
    and by whom a shard was written, which makes the bytes reproducible.
    """
    return wds.ShardWriter(f"{split}-%06d.tar", maxcount=sys.maxsize, maxsize=float("inf"), start_shard=index,
                           verbose=0, opener=lambda _name: handle, encoder=False, mtime=0, user=TAR_OWNER,
                           group=TAR_OWNER)


def remove_stale(out_dir: Path, keep: set[str]) -> list[str]:
    """Delete shard files of jobs no longer planned (e.g. after the dataset shrank) and temporaries of killed
    writes. Called once every job has finished."""
    removed = []
    for split in SPLITS:
        removed += remove_orphaned_temporaries(out_dir / split)  # writes a killed run left half done
        for path in sorted((out_dir / split).glob(f"{split}-*")):
            if path.name.split(".")[0] not in keep:
                path.unlink()
                removed.append(path.name)
    return removed
