"""Wan2.1 family: WanTransformer3DModel + AutoencoderKLWan + UMT5, real classifier-free guidance."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from dcm.models.family import TeacherFamily
from dcm.models.tiling import Tiling, read_config


class WanFamily(TeacherFamily):
    name = "wan"
    guidance = "cfg"
    # Wan keeps the output modulation in `scale_shift_table` beside norm_out/proj_out: it is part of
    # the output layers the detail expert re-learns.
    detail_modules = ("condition_embedder", "norm_out", "proj_out", "scale_shift_table")
    block_lists = ("blocks",)
    components = {"transformer": True, "vae": True, "text_encoder": True, "tokenizer": False}
    stock_pipeline = "WanPipeline"

    @classmethod
    def _load(cls, folder: Path, device: torch.device, dtype: torch.dtype, max_text_tokens: int) -> WanFamily:
        from transformers import AutoTokenizer, UMT5EncoderModel
        transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", use_safetensors=True, torch_dtype=dtype).to(device)
        vae = AutoencoderKLWan.from_pretrained(folder / "vae", use_safetensors=True, torch_dtype=torch.float32).to(device)
        text = {"encoder": UMT5EncoderModel.from_pretrained(folder / "text_encoder", use_safetensors=True, torch_dtype=dtype).to(device),
                "tokenizer": AutoTokenizer.from_pretrained(folder / "tokenizer")}
        return cls(transformer, vae, text, max_text_tokens)

    @classmethod
    def tiling(cls, folder: Path) -> Tiling:
        vae, transformer = read_config(folder, "vae"), read_config(folder, "transformer")
        downsample = vae.get("temperal_downsample", [False, True, True])
        return Tiling(2 ** sum(downsample), 2 ** len(downsample), tuple(transformer.get("patch_size", (1, 2, 2))), True)

    def stock_components(self) -> dict[str, object]:
        return {"vae": self.vae, "text_encoder": self.text_parts["encoder"], "tokenizer": self.text_parts["tokenizer"]}

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    def _compression(self) -> tuple[int, int]:
        downsample = self.vae.config.temperal_downsample
        return 2 ** sum(downsample), 2 ** len(downsample)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        temporal, spatial = self._compression()
        return self.vae.config.z_dim, (frames - 1) // temporal + 1, height // spatial, width // spatial

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(self.vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        # The mode, not a sample: precomputed latents must not depend on an unseeded draw.
        latents = self.vae.encode(video.to(self.vae.dtype)).latent_dist.mode()
        mean, std = self._stats(latents)
        return (latents - mean) / std

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents.float())
        return self.vae.decode((latents.float() * std + mean).to(self.vae.dtype)).sample.clamp(-1, 1)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """As WanPipeline does: T5 states of the real tokens, zeros after them, fixed length."""
        tokenizer, encoder = self.text_parts["tokenizer"], self.text_parts["encoder"]
        tokens = tokenizer(prompts, padding="max_length", max_length=self.max_text_tokens, truncation=True,
                           add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(encoder.device), tokens.attention_mask.to(encoder.device)
        states = encoder(ids, mask).last_hidden_state
        return {"embeds": states * mask.unsqueeze(-1).to(states.dtype), "mask": mask.bool()}

    def velocity(self, latents, sigma, cond, guidance=None):
        dtype = self.transformer.dtype
        # The timestep stays fp32 (diffusers casts its sinusoidal embedding to the embedder's dtype itself): in
        # bf16, timesteps near 1000 would be 4 apart and neighbouring nodes would look alike.
        return self.transformer(hidden_states=latents.to(dtype), timestep=self.timestep(sigma).float(),
                                encoder_hidden_states=cond["embeds"].to(dtype), return_dict=False)[0]
