"""Evaluation prompts, each with its own noise seed: held-out shapes samples from the val shards, a
prompt file, or VBench's prompt suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcm.config import DCMConfig
from dcm.data.reader import make_dataset
from dcm.errors import StageError


def heldout_samples(shard_dir: str | Path, count: int) -> tuple[list[dict], np.ndarray]:
    """`count` val samples, those whose colour+shape pair never appeared in training first, topped up
    with the other val samples when there are too few: (prompts, their real clips). Each prompt: caption,
    seed, and the shapes ground truth where the clip has one."""
    heldout, others = [], []
    for number, sample in enumerate(make_dataset(shard_dir, "val", split_by_rank=False)):  # the same on every rank
        meta = sample["meta"]
        entry = {"caption": sample["caption"], "seed": int(meta.get("index", number)),
                 "heldout": bool(meta.get("heldout")),
                 **{k: meta[k] for k in ("shape", "colour", "background", "direction", "texture") if k in meta}}
        (heldout if entry["heldout"] else others).append((entry, sample["clip"]))
        if len(heldout) >= count:
            break
    chosen = (heldout + others)[:count]
    return [entry for entry, _ in chosen], np.stack([clip for _, clip in chosen]) if chosen else np.zeros((0,))


def heldout_prompts(shard_dir: str | Path, count: int) -> list[dict]:
    return heldout_samples(shard_dir, count)[0]


def real_clips(shard_dir: str | Path, count: int) -> np.ndarray:
    """Up to `count` held-out real clips: what generated clips are compared with as a distribution."""
    return heldout_samples(shard_dir, count)[1]


def has_ground_truth(prompts: list[dict]) -> bool:
    """Only prompts drawn from shapes clips carry what the judge checks."""
    return bool(prompts) and all("background" in p and "shape" in p for p in prompts)


def file_prompts(path: str | Path, count: int, seed: int) -> list[dict]:
    """The first `count` non-empty lines of a prompt file; seeds seed, seed+1, ..."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"evaluate.prompt_file {path} not found: give a text file with one prompt per line")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise StageError(f"evaluate.prompt_file {path} has no prompts: write one prompt per line")
    return [{"caption": line, "seed": seed + index} for index, line in enumerate(lines[:count])]


def vbench_suite_prompts(dimensions: list[str], count: int, seed: int) -> list[dict]:
    """VBench's own prompt suite (VBench_full_info.json in the vbench package): the prompts written for
    the configured dimensions (all of them when none is configured), in the suite's order."""
    import vbench
    suite = json.loads((Path(vbench.__file__).parent / "VBench_full_info.json").read_text())
    wanted = set(dimensions)
    captions = [e["prompt_en"] for e in suite if not wanted or wanted & set(e["dimension"])]
    captions = list(dict.fromkeys(captions))[:count]
    return [{"caption": caption, "seed": seed + index} for index, caption in enumerate(captions)]


def evaluation_prompts(cfg: DCMConfig) -> list[dict]:
    ev = cfg.evaluate
    if ev.prompt_source == "heldout":
        return heldout_prompts(cfg.shard.dir, ev.prompts)
    if ev.prompt_source == "file":
        return file_prompts(ev.prompt_file, ev.prompts, cfg.seed)
    return vbench_suite_prompts(ev.vbench.dimensions, ev.prompts, cfg.seed)
