"""Find a folder's videos and their captions (sidecar .txt files or a CSV/JSONL manifest).

Problems with an input never stop the scan: each becomes a `Skip` with a reason that ends up in the
shard manifest, so the user sees every file that was left out and why.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from dcm.config import VideosConfig

SPLIT_RESOLUTION = 1_000_000  # val_fraction is applied to a hash bucket in [0, 1e6)


@dataclass(frozen=True)
class VideoInput:
    path: str  # relative to the videos folder, POSIX style: stable across machines
    caption: str
    split: str


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str

    def as_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def _bucket(relative_path: str) -> int:
    return int(hashlib.sha256(relative_path.encode()).hexdigest(), 16) % SPLIT_RESOLUTION


def split_of(relative_path: str, val_fraction: float) -> str:
    """Deterministic by path: adding files never moves an existing file between splits."""
    return "val" if _bucket(relative_path) < val_fraction * SPLIT_RESOLUTION else "train"


def check_both_splits(inputs: list[VideoInput], val_fraction: float) -> None:
    """Refuse, before any decoding, a val_fraction that leaves a split empty, naming the values that work."""
    splits = {v.split for v in inputs}
    if len(inputs) < 2 or splits == {"train", "val"}:
        if len(inputs) == 1:
            raise ValueError(f"only one usable video ({inputs[0].path}): the train and val splits need one each; "
                             "add videos to data.videos.dir")
        return
    buckets = sorted(_bucket(v.path) for v in inputs)
    # val needs a bucket below val_fraction·R, train one at or above it
    low, high = (buckets[0] + 1) / SPLIT_RESOLUTION, buckets[-1] / SPLIT_RESOLUTION
    empty = "val" if "val" not in splits else "train"
    raise ValueError(f"data.videos.val_fraction={val_fraction} leaves the {empty} split empty: {len(inputs)} usable "
                     f"videos are split by a hash of their paths, and a val_fraction from {math.ceil(low * 1000) / 1000} "
                     f"to {math.floor(high * 1000) / 1000} puts at least one in each; or add videos")


def _read_caption_text(raw: bytes, where: str) -> str:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"caption in {where} is not UTF-8; re-save it as UTF-8") from None
    if not text:
        raise ValueError(f"caption in {where} is empty")
    return text


def _manifest_captions(manifest: Path) -> dict[str, str]:
    """path → caption from a .csv (header: path,caption) or .jsonl ({"path": ..., "caption": ...})."""
    if not manifest.is_file():
        raise FileNotFoundError(f"caption manifest {manifest} not found (data.videos.captions)")
    raw = manifest.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"caption manifest {manifest} is not UTF-8") from None
    rows: list[dict] = []
    if manifest.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif manifest.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{manifest}:{number}: not JSON: {error}") from None
    else:
        raise ValueError(f"caption manifest {manifest} must be .csv or .jsonl")
    if rows and not {"path", "caption"} <= set(rows[0]):
        raise ValueError(f"caption manifest {manifest} needs the columns 'path' and 'caption'")
    return {str(row["path"]).replace("\\", "/"): str(row.get("caption") or "") for row in rows}


def discover_videos(folder: str | Path, cfg: VideosConfig) -> tuple[list[VideoInput], list[Skip]]:
    """All videos under `folder` (sorted, so the order is the same everywhere) with their captions."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"videos folder {folder} not found (data.videos.dir)")
    extensions = {e.lower().lstrip(".") for e in cfg.extensions}
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower().lstrip(".") in extensions)
    manifest = None if cfg.captions == "sidecar" else _manifest_captions(folder / cfg.captions
                                                                         if not Path(cfg.captions).is_absolute()
                                                                         else Path(cfg.captions))
    inputs, skips = [], []
    for relative in files:
        try:
            if manifest is None:
                sidecar = (folder / relative).with_suffix(".txt")
                if not sidecar.is_file():
                    raise ValueError(f"no caption: add {sidecar.name} beside it or use a caption manifest")
                caption = _read_caption_text(sidecar.read_bytes(), sidecar.name)
            else:
                if relative not in manifest:
                    raise ValueError("no caption: the caption manifest has no row for it")
                caption = _read_caption_text(manifest[relative].encode(), "the caption manifest")
        except ValueError as reason:
            skips.append(Skip(relative, str(reason)))
            continue
        inputs.append(VideoInput(relative, caption, split_of(relative, cfg.val_fraction)))
    if manifest is not None:
        skips += [Skip(p, "listed in the caption manifest but the file is missing")
                  for p in sorted(set(manifest) - set(files))]
    return inputs, skips
