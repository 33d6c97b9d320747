"""DCMPipeline: the distilled few-step generator, in diffusers' conventions.

    pipe = DCMPipeline.from_pretrained("data/students/dcm")
    video = pipe("a red circle moving left over black", num_inference_steps=4).frames[0]

One folder holds the whole student:
    dcm_student.json      method, segment edges, schedule, routing: what DCMPipeline needs beyond the weights
    model_index.json      a stock diffusers index where the family has a two-expert pipeline (Wan: WanPipeline,
                          dcm/stock_export.py), else the family's index naming DCMPipeline
    transformer/          the semantic expert (or the single expert of LCM/PCM), a plain diffusers model
    detail/               pytorch_lora_weights.safetensors (diffusers/peft LoRA format) + detail_modules.safetensors
                          (copied conditioning/output layers), or detail/transformer/ for two full experts
    transformer_2/, scheduler/   Wan: the detail expert merged, and a scheduler placing the steps as DCM does
    vae/, text_encoder/…  the teacher's other components (hard links where possible, else copies; never symlinks)
    README.md             the model card (dcm/model_card.py)

Steps are split evenly between the experts and spaced uniformly over each segment's Euler nodes; any
count works (1, 2, 4, 8, …). No CFG: the guidance was distilled in. With `detail_weights="merged"` the
LoRA is folded into a second weight set, so a detail step costs exactly what a semantic step costs.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcm.config import ScheduleConfig
from dcm.models.dual_expert import DETAIL, Student
from dcm.models.lora_io import load_modules, merged_detail_transformer, save_adapter, save_modules
from dcm.models.registry import family_class
from dcm.sampling import seeded_noise
from dcm.schedule import euler_step, inference_sigmas
from dcm.stock_export import DETAIL_DIR, INDEX, INFO, copy_component, write_stock_pipeline


@dataclass
class DCMPipelineOutput:
    frames: np.ndarray | torch.Tensor  # np/pt: (B, F, H, W, 3) in [0, 1]; latent: (B, C, T, H, W)


class DCMPipeline:
    def __init__(self, family, student: Student, info: dict):
        self.family, self.student, self.info = family, student, info
        self.schedule = ScheduleConfig(**info["schedule"])
        self.edges = list(info["edges"])

    @property
    def device(self) -> torch.device:
        return next(self.student.parameters()).device

    # -- saving and loading ------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, components_from: str | Path) -> None:
        """Write the student into `folder`; the VAE and text components come from the teacher folder
        `components_from`. A stock pipeline's scheduler reproduces the placement of info["sample_steps"] steps."""
        folder, source = Path(folder), Path(components_from)
        folder.mkdir(parents=True, exist_ok=True)
        index = json.loads((source / INDEX).read_text()) if (source / INDEX).is_file() else {}
        for component in sorted(p for p in source.iterdir() if p.is_dir() and p.name != "transformer"):
            copy_component(component, folder / component.name, link=self.family.name != "toy")
        semantic = copy.deepcopy(self.student.transformer)
        if getattr(semantic, "_hf_peft_config_loaded", False):
            semantic.unload_lora()  # the semantic expert's own weights, without the detail adapter
        semantic.save_pretrained(folder / "transformer", safe_serialization=True)
        if self.student.detail_kind == "lora":
            save_adapter(self.student.transformer, folder / DETAIL_DIR, DETAIL)
            save_modules(self.student.detail_modules(), folder / DETAIL_DIR)
        elif self.student.detail_kind == "full":
            self.student.detail_transformer.save_pretrained(folder / DETAIL_DIR / "transformer", safe_serialization=True)
        (folder / INFO).write_text(json.dumps(self.info, indent=2, sort_keys=True) + "\n")
        if self.family.stock_pipeline:
            write_stock_pipeline(folder, self.family, self.info)
            return
        index.update({"_class_name": "DCMPipeline"})
        (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        detail_weights: str = "adapter") -> DCMPipeline:
        """detail_weights: "adapter" (LoRA applied on the fly) or "merged" (a second, fused weight set)."""
        folder = Path(folder)
        if not (folder / INDEX).is_file():
            raise FileNotFoundError(f"{folder / INDEX} not found: {folder} is not a DCMPipeline folder "
                                    "(run the distill stages, or pass the folder they wrote)")
        if not (folder / INFO).is_file():
            raise ValueError(f"{folder / INFO} not found: {folder} is a teacher folder, not a distilled student")
        info = json.loads((folder / INFO).read_text())
        family = family_class(info["family"]).load(folder, info["max_text_tokens"], device, dtype)
        student = Student(family, family.transformer, info["threshold"], info["guidance"])
        kind, detail = info["detail"], folder / DETAIL_DIR
        if kind == "lora":
            load_detail_adapter(student, detail, family.detail_modules, info["threshold"], detail_weights, device)
        elif kind == "full":
            transformer_class = type(family.transformer)
            student.detail_kind, student.threshold = "full", info["threshold"]
            student.detail_transformer = transformer_class.from_pretrained(detail / "transformer", use_safetensors=True, torch_dtype=dtype).to(device)
        return cls(family, student.eval(), info)

    def compile(self, decoder_recompile_limit: int = 64) -> None:
        """torch.compile the repeated blocks of both experts (regional: the compile cost is one block's)
        and the VAE decoder. The first call after this pays the compilation (BENCHMARKS.md lists it)."""
        experts = [self.student.transformer] + ([self.student.detail_transformer]
                                                 if self.student.detail_transformer is not None else [])
        for expert in experts:
            if getattr(expert, "_repeated_blocks", None):
                expert.compile_repeated_blocks(fullgraph=True)
        self.family.compile_decoder(decoder_recompile_limit)

    # -- generating ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, num_inference_steps: int = 4,
                 generator: torch.Generator | None = None, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None, latents: torch.Tensor | None = None, output_type: str = "np",
                 prompt_embeds: dict[str, torch.Tensor] | None = None,
                 sigmas: list[float] | None = None) -> DCMPipelineOutput:
        """prompt_embeds: the family's encode_prompts output, computed once and reused (then `prompt` is
        not needed); text encoding is the one cost a few-step sampler cannot amortise. sigmas: a placement of
        the steps other than DCM's own (one per step, descending; 0 is appended), as diffusers pipelines take."""
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass a prompt or prompt_embeds")
        prompts = ([prompt] if isinstance(prompt, str) else list(prompt)) if prompt_embeds is None else \
            [""] * len(next(iter(prompt_embeds.values())))
        defaults = self.info["defaults"]
        frames, height, width = num_frames or defaults["frames"], height or defaults["height"], width or defaults["width"]
        shape = (len(prompts), *self.family.latent_shape(frames, height, width))
        if latents is None:
            latents = torch.randn(shape, generator=generator)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape} for {len(prompts)} prompts of "
                             f"{frames}×{height}×{width}")
        x = latents.to(self.device, torch.float32)
        cond = self.family.encode_prompts(prompts) if prompt_embeds is None else \
            {k: v.to(self.device) for k, v in prompt_embeds.items()}
        if sigmas is None:
            sigmas = inference_sigmas(self.schedule, num_inference_steps, self.edges).to(self.device)
        elif len(sigmas) != num_inference_steps:
            raise ValueError(f"{len(sigmas)} sigmas for num_inference_steps={num_inference_steps}: pass one per step")
        else:
            sigmas = torch.tensor([*map(float, sigmas), 0.0], dtype=torch.float32, device=self.device)
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            velocity = self.student(x, sigma.expand(len(prompts)).float(), cond)
            x = euler_step(x, velocity.float(), sigma, sigma_next)
        if output_type == "latent":
            return DCMPipelineOutput(frames=x)
        video = ((self.family.decode_latents(x).float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)
        if output_type == "pt":  # left on the pipeline's device, as diffusers pipelines do
            return DCMPipelineOutput(frames=video)
        if output_type == "np":
            return DCMPipelineOutput(frames=video.cpu().numpy())
        raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")


    @torch.no_grad()
    def videos(self, prompts: list[str], seeds: list[int], steps: int, frames: int, height: int, width: int,
               batch_size: int, sigmas: list[float] | None = None) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1], each prompt from its own seeded noise (`sampling.seeded_noise`), so a
        student starts from the same noise as the teacher's reference sampler for the same prompt. sigmas: as
        __call__ takes them (None: the student's own placement)."""
        shape = self.family.latent_shape(frames, height, width)
        parts = []
        for start in range(0, len(prompts), batch_size):
            noise = seeded_noise(seeds[start:start + batch_size], shape, torch.device("cpu"))
            out = self(prompts[start:start + batch_size], num_inference_steps=steps, num_frames=frames, height=height,
                       width=width, latents=noise, output_type="pt", sigmas=sigmas).frames
            parts.append((out.permute(0, 4, 1, 2, 3) * 2 - 1).cpu())  # many clips: collect them off the GPU
        return torch.cat(parts)


def load_detail_adapter(student: Student, folder: Path, detail_modules: tuple[str, ...], threshold: float,
                        detail_weights: str, device) -> None:
    transformer = student.transformer
    if detail_weights == "adapter":
        student.detail_kind, student.threshold = "lora", threshold
        student.copy_detail_modules(detail_modules)
        student.load_detail_modules(load_modules(folder))
        transformer.load_lora_adapter(folder, adapter_name=DETAIL, use_safetensors=True)
        student.to(device)
    elif detail_weights == "merged":
        merged = merged_detail_transformer(transformer, folder)
        student.detail_kind, student.threshold, student.detail_transformer = "full", threshold, merged.to(device)
    else:
        raise ValueError(f"detail_weights must be 'adapter' or 'merged', got {detail_weights!r}")
