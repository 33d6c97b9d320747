"""The toy family's VAE: pixel space behind the VAE interface (latents = pixels scaled to [-1, 1]).

Lossless and free, so the toy teacher's quality is never capped by a reconstruction error, and every
code path that expects `encode`/`decode` and a latent shape works unchanged. The transformer's
patch embedding (patch_size [1, 4, 4]) does the spatial compression a learned VAE would do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIG_NAME = "config.json"


class PixelVAE:
    latent_channels = 3
    spatial_compression = 1
    temporal_compression = 1

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] → latents of the same shape."""
        return video

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1.0, 1.0)

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps({"_class_name": type(self).__name__}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PixelVAE:
        config = json.loads((Path(folder) / CONFIG_NAME).read_text())
        if config.get("_class_name") != cls.__name__:
            raise ValueError(f"{folder}/{CONFIG_NAME} describes {config.get('_class_name')}, not {cls.__name__}")
        return cls()
