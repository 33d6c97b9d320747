"""Read the precompute stage's samples back: latents, text embeddings and teacher trajectories."""

from __future__ import annotations

import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from dcm.data.reader import check_members

TEXT_PREFIX = "text."
MEMBERS = {"tensors.safetensors", "caption.txt", "meta.json"}


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf."""
    return [name for name, value in tensors.items() if value.is_floating_point() and not torch.isfinite(value).all()]


def decode_precomputed(raw: dict) -> dict:
    """Raw tar members → {"key", "tensors" (float32), "caption", "meta"}; names the sample on failure."""
    key = raw.get("__key__", "?")
    check_members(raw, MEMBERS, "precomputed sample")
    try:
        tensors = load_safetensors(raw["tensors.safetensors"])
        caption = raw["caption.txt"].decode("utf-8")
        meta = json.loads(raw["meta.json"])
    except (KeyError, ValueError, OSError, RuntimeError, SafetensorError) as error:
        raise ValueError(f"precomputed sample {key} in {raw.get('__url__', '?')} is corrupt: {error}; delete that "
                         "shard and re-run the precompute stage") from error
    if bad := non_finite(tensors):
        raise ValueError(f"precomputed sample {key} in {raw.get('__url__', '?')} has non-finite values in {bad}; "
                         "delete that shard and re-run the precompute stage (if it recurs, the teacher diverged)")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    return {"key": key, "tensors": tensors, "caption": caption, "meta": meta}


def has_trajectory(sample: dict) -> bool:
    return "trajectory" in sample["tensors"]


def text_condition(samples: list[dict], device: torch.device) -> dict[str, torch.Tensor]:
    """The stored prompt embeddings of a batch, as the family's encode_prompts would return them."""
    names = [k for k in samples[0]["tensors"] if k.startswith(TEXT_PREFIX)]
    return {name[len(TEXT_PREFIX):]: torch.stack([s["tensors"][name] for s in samples]).to(device) for name in names}


def stack(samples: list[dict], name: str, device: torch.device) -> torch.Tensor:
    return torch.stack([s["tensors"][name] for s in samples]).to(device)
