"""Checks that need more than params.yaml (a teacher folder's configs), run before a stage does any work."""

from __future__ import annotations

from pathlib import Path

from dcm.config import ConfigError, DCMConfig
from dcm.models.registry import family_class
from dcm.models.tiling import Tiling, geometry_problem


def check_geometry(cfg: DCMConfig) -> None:
    """data.frames × height × width must tile the teacher's VAE and patch, or the first forward pass fails
    deep inside diffusers. A real teacher folder that is missing is left to the teacher stage to report."""
    if cfg.teacher.family == "toy":  # pixel "latents": only the patch divides
        tiling, who = Tiling(1, 1, tuple(cfg.teacher.toy.model.patch_size), False), "the toy teacher (teacher.toy.model)"
    else:
        folder = Path(cfg.teacher.path)
        if not folder.is_dir():
            return
        try:
            tiling = family_class(cfg.teacher.family).tiling(folder)
        except FileNotFoundError:
            return  # an incomplete folder: validate_folder names everything missing
        who = f"the {cfg.teacher.family} teacher in {folder}"
    problem = geometry_problem(tiling, cfg.data.frames, cfg.data.height, cfg.data.width, who)
    if problem:
        raise ConfigError(problem)
