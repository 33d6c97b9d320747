"""The scores every set of generated clips gets, with or without ground truth in its prompts.

The judge runs only where the prompts carry shapes ground truth. Everything else needs none: saturation,
temporal flicker, the patch grid showing through, and the distance to held-out real clips as a
distribution (dcm/eval/distribution.py), so real footage is scored by the same code as the shapes domain.
"""

from __future__ import annotations

import numpy as np

from dcm.config import DataConfig, JudgeConfig
from dcm.eval.distribution import feature_mmd
from dcm.eval.fidelity import patch_grid, saturation_stats, temporal_flicker
from dcm.eval.judge import judge_many
from dcm.eval.prompts import has_ground_truth


def clip_scores(clips: np.ndarray, prompts: list[dict], real: np.ndarray | None, data: DataConfig,
                judge: JudgeConfig, patch: tuple[int, int] | None = None) -> dict[str, float]:
    """judge_* (shapes prompts only), saturation, flicker, mmd_vs_real (two clips or more on each side) and,
    given the teacher's pixels per token, patch_grid."""
    scores = {f"judge_{k}": v for k, v in judge_many(clips, prompts, data, judge).items()} \
        if has_ground_truth(prompts) else {}
    scores |= saturation_stats(clips)
    scores["temporal_flicker"] = temporal_flicker(clips)
    if patch is not None and min(patch) >= 2:  # a token of one pixel has no grid to show
        scores["patch_grid"] = patch_grid(clips, patch)
    if real is not None and len(real) >= 2 and len(clips) >= 2:
        scores["mmd_vs_real"] = feature_mmd(clips, real)
    return scores
