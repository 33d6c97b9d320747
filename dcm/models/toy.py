"""The toy family: Wan's own transformer class, tiny, over pixel "latents" and a word-hash text encoder.

Because the transformer is the real `WanTransformer3DModel`, every DCM code path (LoRA targets, copied
detail modules, block taps) runs on the class the Wan2.1 teacher uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel

from dcm.config import DCMConfig
from dcm.models.hash_text import HashTextEncoder
from dcm.models.pixel_vae import PixelVAE
from dcm.models.wan import WanFamily

MODEL_INDEX = "model_index.json"


class ToyFamily(WanFamily):
    name = "toy"
    components = {"transformer": True, "vae": False, "text_encoder": False}

    @classmethod
    def build(cls, cfg: DCMConfig, generator_seed: int) -> ToyFamily:
        """A freshly initialised toy teacher (the `teacher` stage then pretrains it)."""
        toy = cfg.teacher.toy
        torch.manual_seed(generator_seed)  # diffusers initialises parameters from the global RNG
        transformer = WanTransformer3DModel(
            patch_size=tuple(toy.model.patch_size), num_attention_heads=toy.model.num_attention_heads,
            attention_head_dim=toy.model.attention_head_dim, in_channels=PixelVAE.latent_channels,
            out_channels=PixelVAE.latent_channels, text_dim=toy.text.dim, freq_dim=toy.model.freq_dim,
            ffn_dim=toy.model.ffn_dim, num_layers=toy.model.num_layers, cross_attn_norm=toy.model.cross_attn_norm,
            qk_norm=toy.model.qk_norm)
        text = HashTextEncoder(toy.text.dim, toy.text.max_tokens, toy.text.position_scale)
        return cls(transformer, PixelVAE(), {"encoder": text}, toy.text.max_tokens)

    @classmethod
    def _load(cls, folder: Path, device: torch.device, dtype: torch.dtype, max_text_tokens: int) -> ToyFamily:
        transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype).to(device)
        text = HashTextEncoder.from_pretrained(folder / "text_encoder")
        return cls(transformer, PixelVAE.from_pretrained(folder / "vae"), {"encoder": text}, text.max_tokens)

    def save_pretrained(self, folder: str | Path, transformer: torch.nn.Module | None = None) -> None:
        """Diffusers layout: model_index.json + one folder per component (`transformer` overrides the
        weights saved, e.g. with the EMA copy)."""
        folder = Path(folder)
        (transformer or self.transformer).save_pretrained(folder / "transformer", safe_serialization=True)
        self.vae.save_pretrained(folder / "vae")
        self.text_parts["encoder"].save_pretrained(folder / "text_encoder")
        (folder / MODEL_INDEX).write_text(json.dumps({
            "_class_name": "DCMToyTeacher", "family": self.name,
            "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["dcm", "PixelVAE"],
            "text_encoder": ["dcm", "HashTextEncoder"]}, indent=2, sort_keys=True) + "\n")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return PixelVAE.latent_channels, frames, height, width

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.float())

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        device = self.transformer.device
        return {k: v.to(device) for k, v in self.text_parts["encoder"](prompts).items()}
