"""Evaluation prompts: held-out shapes samples from the val shards, each with its own noise seed."""

from __future__ import annotations

from pathlib import Path

from dcm.data.reader import make_dataset


def heldout_prompts(shard_dir: str | Path, count: int) -> list[dict]:
    """The first `count` val samples whose colour+shape pair never appeared in training (all val
    samples when the config holds nothing out). Each entry: caption, ground truth, seed."""
    chosen, fallback = [], []
    for sample in make_dataset(shard_dir, "val"):
        meta = sample["meta"]
        entry = {"caption": sample["caption"], "seed": int(meta.get("index", len(fallback))),
                 **{k: meta[k] for k in ("shape", "colour", "background", "direction") if k in meta}}
        (chosen if meta.get("heldout") else fallback).append(entry)
        if len(chosen) >= count:
            break
    return (chosen or fallback)[:count]
