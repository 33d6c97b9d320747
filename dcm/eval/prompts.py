"""Evaluation prompts: held-out shapes samples from the val shards, each with its own noise seed."""

from __future__ import annotations

from pathlib import Path

from dcm.data.reader import make_dataset


def heldout_prompts(shard_dir: str | Path, count: int) -> list[dict]:
    """`count` val samples, those whose colour+shape pair never appeared in training first, topped up
    with the other val samples when there are too few. Each entry: caption, ground truth, seed."""
    heldout, others = [], []
    for number, sample in enumerate(make_dataset(shard_dir, "val")):
        meta = sample["meta"]
        entry = {"caption": sample["caption"], "seed": int(meta.get("index", number)),
                 "heldout": bool(meta.get("heldout")),
                 **{k: meta[k] for k in ("shape", "colour", "background", "direction") if k in meta}}
        (heldout if entry["heldout"] else others).append(entry)
        if len(heldout) >= count:
            break
    return (heldout + others)[:count]
