"""Checks that need more than params.yaml (a teacher folder's configs), run before a stage does any work."""

from __future__ import annotations

from pathlib import Path

from dcm.config import ConfigError, DCMConfig
from dcm.models.registry import family_class
from dcm.models.tiling import Tiling, geometry_problem


def teacher_tiling(cfg: DCMConfig) -> Tiling | None:
    """The teacher's VAE compression and patch from configs alone; None while a real teacher's folder is
    missing or incomplete (the teacher stage reports that)."""
    if cfg.teacher.family == "toy":  # pixel "latents": only the patch divides
        return Tiling(1, 1, tuple(cfg.teacher.toy.model.patch_size), False)
    folder = Path(cfg.teacher.path)
    if not folder.is_dir():
        return None
    try:
        return family_class(cfg.teacher.family).tiling(folder)
    except FileNotFoundError:
        return None  # an incomplete folder: validate_folder names everything missing


def pixel_patch(cfg: DCMConfig) -> tuple[int, int] | None:
    """Pixels per token (height, width): the period at which a patch grid would show in a clip."""
    tiling = teacher_tiling(cfg)
    return None if tiling is None else tiling.pixel_multiple


def check_geometry(cfg: DCMConfig) -> None:
    """data.frames × height × width must tile the teacher's VAE and patch, or the first forward pass fails
    deep inside diffusers. A real teacher folder that is missing is left to the teacher stage to report."""
    tiling = teacher_tiling(cfg)
    if tiling is None:
        return
    who = ("the toy teacher (teacher.toy.model)" if cfg.teacher.family == "toy"
           else f"the {cfg.teacher.family} teacher in {cfg.teacher.path}")
    problem = geometry_problem(tiling, cfg.data.frames, cfg.data.height, cfg.data.width, who)
    if problem:
        raise ConfigError(problem)
