"""The adapter API every teacher family implements, and loading a teacher from a local folder.

A family adapter knows its diffusers classes, how prompts become embeddings, how pixels become
normalised latents and back, its guidance style, the modules the detail expert duplicates and where
block features are read. Everything above this layer (training, sampling, precompute) speaks only this
API, so a new family is one small file.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Iterator

import torch
from torch import nn

from dcm.errors import StageError
from dcm.io import sha256_file
from dcm.schedule import TIMESTEP_SCALE

WEIGHT_SUFFIXES = (".safetensors",)


class TeacherFolderError(StageError):
    """A teacher folder that cannot be loaded; the message lists everything that is missing."""


def validate_folder(folder: Path, components: dict[str, bool]) -> None:
    """components: subfolder → whether it must hold safetensors weights. Lists every problem at once."""
    problems = []
    if not folder.is_dir():
        raise TeacherFolderError(f"teacher folder {folder} does not exist (teacher.path); nothing is downloaded, "
                                 "so point it at a local diffusers-format copy")
    for name, needs_weights in components.items():
        sub = folder / name
        if not sub.is_dir():
            problems.append(f"{name}/ (missing folder)")
            continue
        if not any(sub.glob("*.json")):
            problems.append(f"{name}/config.json (or tokenizer json)")
        if needs_weights and not any(p.suffix in WEIGHT_SUFFIXES for p in sub.iterdir()):
            problems.append(f"{name}/*.safetensors (no weights; .bin/.pt files are never loaded)")
    if problems:
        raise TeacherFolderError(f"teacher folder {folder} is incomplete: missing " + "; ".join(problems))


def folder_hash(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every file: changes when any byte changes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


class TeacherFamily:
    """A loaded teacher: transformer + VAE + text encoding, behind the family-independent API."""

    name: ClassVar[str]
    guidance: ClassVar[str]  # "cfg": real classifier-free guidance; "embedded": guidance-distilled input
    detail_modules: ClassVar[tuple[str, ...]]  # copied into the detail expert (conditioning + output)
    block_lists: ClassVar[tuple[str, ...]]  # ModuleList attributes whose blocks can be tapped
    components: ClassVar[dict[str, bool]]  # subfolder → holds weights
    # the stock diffusers pipeline a student folder of this family is written as (dcm/stock_export.py); None:
    # the folder loads through DCMPipeline only
    stock_pipeline: ClassVar[str | None] = None

    def __init__(self, transformer: nn.Module, vae, text_parts: dict, max_text_tokens: int):
        self.transformer, self.vae, self.text_parts = transformer, vae, text_parts
        self.max_text_tokens = max_text_tokens

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, max_text_tokens: int, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> TeacherFamily:
        folder = Path(folder)
        validate_folder(folder, cls.components)
        return cls._load(folder, torch.device(device), dtype, max_text_tokens)

    @classmethod
    def _load(cls, folder: Path, device: torch.device, dtype: torch.dtype, max_text_tokens: int) -> TeacherFamily:
        raise NotImplementedError

    @classmethod
    def tiling(cls, folder: Path):
        """The clip sizes the folder's VAE and transformer take (dcm.models.tiling.Tiling), from configs alone."""
        raise NotImplementedError

    def stock_components(self) -> dict[str, object]:
        """The stock pipeline's components besides transformers and scheduler, by their index names."""
        raise NotImplementedError(f"{self.name}: no stock pipeline export")

    # -- shapes --------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> tuple[int, int, int]:
        """(t, h, w) patch of the transformer: with the latent shape it gives the token grid."""
        raise NotImplementedError

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def token_grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(frames, rows, cols) of tokens for latents (C, T, H, W), inferred — never hard-coded."""
        _, t, h, w = latent_shape[-4:]
        pt, ph, pw = self.patch_size
        return t // pt, h // ph, w // pw

    # -- the three model calls -----------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] → normalised latents (B, C, T, H', W')."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → (B, 3, F, H, W) in [-1, 1]."""
        raise NotImplementedError

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor],
                 guidance: float | None = None) -> torch.Tensor:
        """Rectified-flow velocity (eps − x0) at per-sample sigmas; `guidance` only for embedded guidance."""
        raise NotImplementedError

    def compile_decoder(self, recompile_limit: int) -> None:
        """torch.compile the VAE's decoder as one graph. Causal video VAEs (Wan, Hunyuan, CogVideoX)
        decode frame chunk by chunk with a feature cache, so each chunk position is its own static
        graph: dynamo must be allowed that many recompiles. Measured on an H200 for Wan at 81×480×832:
        1.84 s → 1.22 s per decode (BENCHMARKS.md)."""
        decoder = getattr(self.vae, "decoder", None)
        if decoder is None:
            return  # no separate decoder module (the toy's pixel VAE): nothing worth compiling
        import torch._dynamo
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, recompile_limit)
        decoder.forward = torch.compile(type(decoder).forward.__get__(decoder), dynamic=False)

    # -- features ------------------------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        return [block for name in self.block_lists for block in getattr(self.transformer, name)]

    @contextmanager
    def tap_blocks(self, every: int) -> Iterator[list[torch.Tensor]]:
        """Collect the hidden states leaving every `every`-th block (forward hooks, removed on exit)."""
        captured: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output)

        handles = [block.register_forward_hook(keep) for block in self.blocks()[every - 1::every]]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """Early exit for feature matching: tapped block tokens through a parameter-free LayerNorm and the
        transformer's output projection (the timestep modulation of the real output layer is left out: it
        needs the forward's internal timestep embedding, and both sides of the comparison share it anyway)."""
        proj = self.transformer.proj_out
        normed = torch.nn.functional.layer_norm(features.float(), features.shape[-1:])
        return proj(normed.to(proj.weight.dtype))

    def feature_width(self) -> int:
        """Width of the tokens leaving a block (what discriminator heads read)."""
        return self.transformer.proj_out.in_features

    @staticmethod
    def timestep(sigma: torch.Tensor) -> torch.Tensor:
        return sigma * TIMESTEP_SCALE


class ScaledVAEFamily(TeacherFamily):
    """Families whose latents are the VAE posterior mode times `vae.config.scaling_factor`."""

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        # The mode, not a sample: precomputed latents must not depend on an unseeded draw.
        latents = self.vae.encode(video.to(self.vae.dtype)).latent_dist.mode()
        return latents * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        scaled = latents.float() / self.vae.config.scaling_factor
        return self.vae.decode(scaled.to(self.vae.dtype)).sample.clamp(-1, 1)
