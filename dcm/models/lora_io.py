"""The detail expert on disk: its LoRA in the format diffusers' `load_lora_adapter` reads, and the copied
conditioning/output layers as a plain safetensors state dict keyed by the transformer's own names.

A plain diffusers transformer therefore becomes the detail expert with
    transformer.load_lora_adapter(folder, adapter_name="detail", use_safetensors=True)
    transformer.load_state_dict(load_file(folder / "detail_modules.safetensors"), strict=False)
and `WanPipeline.load_lora_weights(folder)` accepts the same file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dcm.io import write_bytes_atomic
from dcm.models.dual_expert import DETAIL

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
PREFIX = "transformer"  # the component prefix diffusers' loaders filter on
MODULES_FILE = "detail_modules.safetensors"


def save_adapter(transformer, folder: Path, adapter_name: str) -> Path:
    from peft.utils import get_peft_model_state_dict
    weights = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in transformer.peft_config[adapter_name].to_dict().items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps({f"{PREFIX}.{k}": v for k, v in config.items()}, sort_keys=True,
                                                         default=str)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"{PREFIX}.{k}": v.detach().cpu().contiguous() for k, v in weights.items()}, folder / LORA_FILE,
              metadata=metadata)
    sort_metadata(folder / LORA_FILE)
    return folder / LORA_FILE


def sort_metadata(path: Path) -> None:
    """safetensors writes `__metadata__` from a Rust HashMap, in an order that changes from process to
    process; sort it in place so the same weights always give the same bytes (DVC and resume checks
    compare them). The header keeps its length, so tensor offsets stay valid."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:
        raise ValueError(f"{path}: the sorted safetensors header does not fit the original ({len(text)} > {size})")
    write_bytes_atomic(path, data[:8] + text.ljust(size, b" ") + data[8 + size:])


def save_modules(modules: dict[str, torch.nn.Module | torch.nn.Parameter], folder: Path) -> Path:
    weights = {}
    for name, value in modules.items():
        if isinstance(value, torch.nn.Parameter):
            weights[name] = value.detach().cpu().contiguous()
        else:
            weights.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in value.state_dict().items()})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, folder / MODULES_FILE)
    return folder / MODULES_FILE


def load_modules(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / MODULES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the folder holds no detail expert layers")
    return load_file(path)


def merged_detail_transformer(transformer, folder: Path):
    """A second plain transformer holding the detail expert: a copy of `transformer` (the semantic expert) with
    the LoRA in `folder` fused into its weights and the copied layers loaded over its own. A detail step then
    costs what a semantic step costs, and stock pipelines load it as `transformer_2`."""
    merged = copy.deepcopy(transformer)
    merged.load_lora_adapter(folder, adapter_name=DETAIL, use_safetensors=True)
    merged.fuse_lora(adapter_names=[DETAIL])
    merged.unload_lora()
    merged.load_state_dict(load_modules(folder), strict=False)
    return merged
