"""CogVideoX family: a v-prediction (VP) diffusion model, adapted to the rectified-flow API.

DCM works in rectified-flow coordinates (x_s = s·eps + (1 − s)·x0, v = eps − x0). CogVideoX was
trained as VP diffusion x_t = a_t·x0 + b_t·eps (a² + b² = 1) predicting v_vp = a·eps − b·x0. The two
describe the same paths: s = b/(a + b) and x_t = (a + b)·x_s. So the adapter maps s to the (fractional)
training timestep with that ratio, rescales the input, and converts the prediction back:
x0 = a·x_t − b·v_vp, eps = b·x_t + a·v_vp, and returns eps − x0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

from dcm.models.family import ScaledVAEFamily
from dcm.models.tiling import Tiling, read_config


class CogVideoXFamily(ScaledVAEFamily):
    name = "cogvideox"
    guidance = "cfg"
    detail_modules = ("time_embedding", "norm_final", "norm_out", "proj_out")
    block_lists = ("transformer_blocks",)
    components = {"transformer": True, "vae": True, "text_encoder": True, "tokenizer": False, "scheduler": False}

    @classmethod
    def _load(cls, folder: Path, device: torch.device, dtype: torch.dtype, max_text_tokens: int) -> CogVideoXFamily:
        from transformers import AutoTokenizer, T5EncoderModel
        pipe = CogVideoXPipeline(
            transformer=CogVideoXTransformer3DModel.from_pretrained(folder / "transformer", use_safetensors=True, torch_dtype=dtype),
            vae=AutoencoderKLCogVideoX.from_pretrained(folder / "vae", use_safetensors=True, torch_dtype=torch.float32),
            text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder", use_safetensors=True, torch_dtype=dtype),
            tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
            scheduler=CogVideoXDDIMScheduler.from_pretrained(folder / "scheduler")).to(device)
        return cls(pipe.transformer, pipe.vae, {"pipeline": pipe}, max_text_tokens)

    @classmethod
    def tiling(cls, folder: Path) -> Tiling:
        vae, transformer = read_config(folder, "vae"), read_config(folder, "transformer")
        patch = transformer.get("patch_size", 2)
        return Tiling(vae.get("temporal_compression_ratio", 4), 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1),
                      (transformer.get("patch_size_t") or 1, patch, patch), True)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        config = self.transformer.config
        return config.patch_size_t or 1, config.patch_size, config.patch_size

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        temporal = self.vae.config.temporal_compression_ratio
        spatial = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.vae.config.latent_channels, (frames - 1) // temporal + 1, height // spatial, width // spatial

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        pipe = self.text_parts["pipeline"]
        embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=self.transformer.device,
                                       max_sequence_length=self.max_text_tokens)
        return {"embeds": embeds}

    def vp_coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fractional timestep, a, b) whose ratio b/(a + b) equals each rectified-flow sigma."""
        alphas = self.text_parts["pipeline"].scheduler.alphas_cumprod.to(sigma.device, torch.float64)
        a_grid, b_grid = alphas.sqrt(), (1 - alphas).sqrt()
        ratio = b_grid / (a_grid + b_grid)  # increasing in t
        s = sigma.to(torch.float64).clamp(float(ratio[0]), float(ratio[-1]))
        upper = torch.searchsorted(ratio, s).clamp(1, len(ratio) - 1)
        weight = (s - ratio[upper - 1]) / (ratio[upper] - ratio[upper - 1])
        t = upper - 1 + weight
        a = a_grid[upper - 1] + weight * (a_grid[upper] - a_grid[upper - 1])
        b = b_grid[upper - 1] + weight * (b_grid[upper] - b_grid[upper - 1])
        norm = (a * a + b * b).sqrt()  # interpolation leaves the unit circle slightly; project back
        return t, a / norm, b / norm

    def velocity(self, latents, sigma, cond, guidance=None):
        dtype, pipe = self.transformer.dtype, self.text_parts["pipeline"]
        t, a, b = self.vp_coefficients(sigma)
        shape = (-1, 1, 1, 1, 1)
        a, b = a.view(shape).to(latents.dtype), b.view(shape).to(latents.dtype)
        x_t = (a + b) * latents
        frames, height, width = latents.shape[2], latents.shape[3], latents.shape[4]
        spatial = 2 ** (len(self.vae.config.block_out_channels) - 1)
        rotary = (pipe._prepare_rotary_positional_embeddings(height * spatial, width * spatial, frames, latents.device)
                  if self.transformer.config.use_rotary_positional_embeddings else None)
        v_vp = self.transformer(hidden_states=x_t.permute(0, 2, 1, 3, 4).to(dtype), timestep=t.to(dtype),
                                encoder_hidden_states=cond["embeds"].to(dtype), image_rotary_emb=rotary,
                                return_dict=False)[0].permute(0, 2, 1, 3, 4).to(latents.dtype)
        x0 = a * x_t - b * v_vp
        eps = b * x_t + a * v_vp
        return eps - x0
