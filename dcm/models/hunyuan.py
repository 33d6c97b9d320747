"""HunyuanVideo family: guidance-distilled (embedded guidance), Llama + CLIP text encoders."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                       HunyuanVideoTransformer3DModel)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from dcm.models.family import ScaledVAEFamily
from dcm.models.tiling import Tiling, read_config

# crop_start None: the pipeline measures the template's length with the folder's own tokenizer
# (95 for the released Llama tokenizer) instead of trusting a constant.
PROMPT_TEMPLATE = {**DEFAULT_PROMPT_TEMPLATE, "crop_start": None}
GUIDANCE_INPUT_SCALE = 1000.0  # the pipeline feeds embedded guidance as scale × 1000


class HunyuanFamily(ScaledVAEFamily):
    name = "hunyuan"
    guidance = "embedded"
    detail_modules = ("time_text_embed", "norm_out", "proj_out")
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    components = {"transformer": True, "vae": True, "text_encoder": True, "tokenizer": False,
                  "text_encoder_2": True, "tokenizer_2": False}

    @classmethod
    def _load(cls, folder: Path, device: torch.device, dtype: torch.dtype, max_text_tokens: int) -> HunyuanFamily:
        from transformers import AutoTokenizer, CLIPTextModel, LlamaModel
        pipe = HunyuanVideoPipeline(
            transformer=HunyuanVideoTransformer3DModel.from_pretrained(folder / "transformer", use_safetensors=True, torch_dtype=dtype),
            vae=AutoencoderKLHunyuanVideo.from_pretrained(folder / "vae", use_safetensors=True, torch_dtype=torch.float32),
            text_encoder=LlamaModel.from_pretrained(folder / "text_encoder", use_safetensors=True, torch_dtype=dtype),
            tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
            text_encoder_2=CLIPTextModel.from_pretrained(folder / "text_encoder_2", use_safetensors=True, torch_dtype=dtype),
            tokenizer_2=AutoTokenizer.from_pretrained(folder / "tokenizer_2"),
            scheduler=FlowMatchEulerDiscreteScheduler()).to(device)
        return cls(pipe.transformer, pipe.vae, {"pipeline": pipe}, max_text_tokens)

    @classmethod
    def tiling(cls, folder: Path) -> Tiling:
        vae, transformer = read_config(folder, "vae"), read_config(folder, "transformer")
        patch = transformer.get("patch_size", 2)
        return Tiling(vae.get("temporal_compression_ratio", 4), vae.get("spatial_compression_ratio", 8),
                      (transformer.get("patch_size_t", 1), patch, patch), True)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        config = self.transformer.config
        return config.patch_size_t, config.patch_size, config.patch_size

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        temporal, spatial = self.vae.config.temporal_compression_ratio, self.vae.config.spatial_compression_ratio
        return self.vae.config.latent_channels, (frames - 1) // temporal + 1, height // spatial, width // spatial

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        pipe = self.text_parts["pipeline"]
        embeds, pooled, mask = pipe.encode_prompt(prompts, prompt_template=PROMPT_TEMPLATE,
                                                  device=self.transformer.device,
                                                  max_sequence_length=self.max_text_tokens)
        return {"embeds": embeds, "mask": mask.bool(), "pooled": pooled}

    def velocity(self, latents, sigma, cond, guidance=None):
        dtype = self.transformer.dtype
        guidance_input = None
        if self.transformer.config.guidance_embeds:
            if guidance is None:
                raise ValueError("HunyuanVideo takes its guidance as an input: pass the guidance scale")
            guidance_input = torch.full((latents.shape[0],), guidance * GUIDANCE_INPUT_SCALE,
                                        device=latents.device, dtype=dtype)
        return self.transformer(hidden_states=latents.to(dtype), timestep=self.timestep(sigma).to(dtype),
                                encoder_hidden_states=cond["embeds"].to(dtype),
                                encoder_attention_mask=cond["mask"].to(dtype),
                                pooled_projections=cond["pooled"].to(dtype), guidance=guidance_input,
                                return_dict=False)[0]
