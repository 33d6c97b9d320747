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
    """With `prediction: x0` the network predicts the clean clip x̂0 and the adapter turns it into the
    velocity every caller expects, v = (x_s − x̂0) / s (with s floored at `min_sigma` to keep the division tame near s = 0).

    Why not predict v directly: in pixel space a 4×4×3 patch token must reproduce 48 values of pure
    noise through a narrow transformer, which a small model learns slowly (its samples stay grainy);
    the clean shapes clip is low-dimensional and easy. This is the x-prediction of "Back to Basics: Let
    Denoising Generative Models Denoise" (Li & He, 2025), trained with the same velocity loss.
    """

    name = "toy"
    components = {"transformer": True, "vae": False, "text_encoder": False}
    stock_pipeline = None  # a word-hash text encoder and a pixel VAE: no stock WanPipeline loads them

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
        family = cls(transformer, PixelVAE(), {"encoder": text}, toy.text.max_tokens)
        family.prediction, family.min_sigma = toy.prediction, toy.min_sigma
        return family

    @classmethod
    def _load(cls, folder: Path, device: torch.device, dtype: torch.dtype, max_text_tokens: int) -> ToyFamily:
        transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", use_safetensors=True, torch_dtype=dtype).to(device)
        text = HashTextEncoder.from_pretrained(folder / "text_encoder")
        family = cls(transformer, PixelVAE.from_pretrained(folder / "vae"), {"encoder": text}, text.max_tokens)
        index = json.loads((folder / MODEL_INDEX).read_text())
        family.prediction, family.min_sigma = index["prediction"], index["min_sigma"]
        return family

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
            "text_encoder": ["dcm", "HashTextEncoder"], "prediction": self.prediction,
            "min_sigma": self.min_sigma},
            indent=2, sort_keys=True) + "\n")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return PixelVAE.latent_channels, frames, height, width

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.float())

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        device = self.transformer.device
        return {k: v.to(device) for k, v in self.text_parts["encoder"](prompts).items()}

    def velocity(self, latents, sigma, cond, guidance=None):
        if self.prediction == "velocity":
            return super().velocity(latents, sigma, cond, guidance)
        clean = super().velocity(latents, sigma, cond, guidance)
        s = sigma.to(latents.dtype).clamp(min=self.min_sigma).view(-1, *([1] * (latents.ndim - 1)))
        return (latents - clean.to(latents.dtype)) / s
