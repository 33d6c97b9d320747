"""Block-wise int8 weights: how a packed teacher travels in about a quarter of its fp32 bytes (weights/README.md).

Every BLOCK consecutive values of a tensor (row-major) share one fp32 scale, their largest magnitude / LEVELS,
and each value is stored as round(value / scale) in int8, so it comes back within half a step: absmax / 254
of its block. Only floating tensors of two or more dimensions (matrices, kernels, modulation tables) are
encoded; vectors (biases, norm weights) are few and stay exact. The decoded file has the source file's tensor
names, shapes, dtypes and metadata, so a decoded folder is an ordinary diffusers folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

BLOCK = 32  # values per scale: a scale costs 4 bytes, 1/8 byte per value at 32 (llama.cpp's Q8_0 block)
LEVELS = 127  # int8's symmetric range: -127..127
SCALE_SUFFIX = ".int8_scale"
ENCODED_SUFFIX = ".int8"  # model.safetensors -> model.safetensors.int8 inside a pack
METADATA_KEY = "dcm_int8"  # in the encoded file: block size, source shapes and dtypes, source metadata


def encodable(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() % BLOCK == 0


def encode(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, one fp32 scale per BLOCK values). An all-zero block gets scale 1 (its values stay 0)."""
    blocks = tensor.detach().float().reshape(-1, BLOCK)
    scales = blocks.abs().amax(dim=1) / LEVELS
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    values = torch.round(blocks / scales[:, None]).clamp(-LEVELS, LEVELS).to(torch.int8)
    return values.reshape(-1), scales


def decode(values: torch.Tensor, scales: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return (values.float().reshape(-1, BLOCK) * scales[:, None]).reshape(shape).to(dtype)


def encode_file(source: Path, target: Path) -> None:
    """A safetensors file with its encodable tensors as int8 + scales, the rest as they are."""
    tensors, shapes = {}, {}
    with safe_open(source, framework="pt") as reader:
        metadata = reader.metadata() or {}
        for name in reader.keys():
            tensor = reader.get_tensor(name)
            if encodable(tensor):
                tensors[name], tensors[name + SCALE_SUFFIX] = encode(tensor)
                shapes[name] = [list(tensor.shape), str(tensor.dtype).removeprefix("torch.")]
            else:
                tensors[name] = tensor.contiguous()
    header = {"block": BLOCK, "encoded": shapes, "metadata": metadata}
    save_file(tensors, target, metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})


def decode_file(source: Path, target: Path) -> None:
    """The inverse of encode_file, up to the rounding: the source file's names, shapes, dtypes and metadata."""
    with safe_open(source, framework="pt") as reader:
        header = json.loads((reader.metadata() or {})[METADATA_KEY])
        if header["block"] != BLOCK:
            raise ValueError(f"{source}: encoded with blocks of {header['block']}, this dcm reads blocks of {BLOCK}")
        tensors = {}
        for name in reader.keys():
            if name.endswith(SCALE_SUFFIX):
                continue
            if name in header["encoded"]:
                shape, dtype = header["encoded"][name]
                tensors[name] = decode(reader.get_tensor(name), reader.get_tensor(name + SCALE_SUFFIX), tuple(shape),
                                       getattr(torch, dtype))
            else:
                tensors[name] = reader.get_tensor(name)
    save_file(tensors, target, metadata=header["metadata"] or None)
