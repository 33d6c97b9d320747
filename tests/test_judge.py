"""Judge: hand-computed math, then calibration on ground-truth clips and on clips that must fail.

Asserted thresholds (means over 60 held-out-seed clips): ground truth ≥ 0.95; the same clips judged
against a wrong colour, shape or direction ≤ 0.10; uniform noise ≤ 0.05; Gaussian blur σ=0.8 px
≥ 0.85; additive Gaussian noise σ=0.05 (of full scale) ≥ 0.90.
"""

import math

import numpy as np
import pytest
from scipy import ndimage

from dcm.config import load_config
from dcm.eval.judge import judge_clip, palette_probabilities, ramp_down, ramp_up, shape_moments
from tests.conftest import REPO, ground_truth_clips

pytestmark = pytest.mark.fast

CFG = load_config(REPO / "params.yaml")
N = 60


def judged(clips_and_prompts):
    return np.mean([judge_clip(c, p, CFG.data, CFG.judge).overall for c, p in clips_and_prompts])


@pytest.fixture(scope="module")
def truth():
    return ground_truth_clips(CFG.data, N)


def test_ramps():
    assert ramp_down(0.1, 0.2, 0.4) == 1.0 and ramp_down(0.5, 0.2, 0.4) == 0.0
    assert ramp_down(0.3, 0.2, 0.4) == pytest.approx(0.5)
    assert ramp_up(0.25, 0.0, 1.0) == pytest.approx(0.25)


def test_palette_probabilities_by_hand():
    # distances² 0 and 0.25 with τ = 0.5: weights 1 and exp(-0.25 / 0.5) = exp(-0.5)
    p = palette_probabilities(np.array([0.0, 0.0, 0.0]), np.array([[0, 0, 0], [0.5, 0, 0]], float), 0.5)
    assert p[0] == pytest.approx(1 / (1 + math.exp(-0.5)))


def test_shape_moments_by_hand():
    area, cx, cy = shape_moments("circle")
    assert area == pytest.approx(math.pi, rel=1e-3) and abs(cx) < 1e-3 and abs(cy) < 1e-3
    area, cx, cy = shape_moments("triangle")  # base 2, height 2: area 2, centroid one third up from base
    assert area == pytest.approx(2.0, rel=1e-3) and cy == pytest.approx(1 / 3, abs=1e-2)


def test_ground_truth_scores_high(truth):
    scores = [judge_clip(c, p, CFG.data, CFG.judge) for c, p in truth]
    assert np.mean([s.overall for s in scores]) >= 0.95
    for name in ("colour", "shape", "motion", "background", "object", "coherence"):
        assert np.mean([getattr(s, name) for s in scores]) >= 0.95, name


@pytest.mark.parametrize("attribute, vocabulary", [
    ("colour", list(CFG.data.shapes.colours)), ("shape", CFG.data.shapes.shapes),
    ("direction", CFG.data.shapes.directions), ("background", list(CFG.data.shapes.backgrounds))])
def test_wrong_attribute_scores_low(truth, attribute, vocabulary):
    wrong = []
    for i, (clip, prompt) in enumerate(truth):
        others = [v for v in vocabulary if v != prompt[attribute]]
        wrong.append((clip, {**prompt, attribute: others[i % len(others)]}))
    assert judged(wrong) <= 0.10


def test_noise_scores_low(truth):
    rng = np.random.default_rng(0)
    assert judged([(rng.integers(0, 256, c.shape, dtype=np.uint8), p) for c, p in truth]) <= 0.05


def test_moderate_blur_and_noise_keep_scores_high(truth):
    blurred = [(ndimage.gaussian_filter(c.astype(float), (0, 0.8, 0.8, 0)).round().astype(np.uint8), p)
               for c, p in truth]
    assert judged(blurred) >= 0.85
    rng = np.random.default_rng(1)
    noisy = [(np.clip(c + rng.normal(0, 0.05 * 255, c.shape), 0, 255).round().astype(np.uint8), p)
             for c, p in truth]
    assert judged(noisy) >= 0.90


def test_frozen_first_frame_fails_motion(truth):
    moving = [(np.repeat(c[:1], len(c), axis=0), p) for c, p in truth if p["direction"] != "still"]
    scores = [judge_clip(c, p, CFG.data, CFG.judge).motion for c, p in moving]
    assert np.mean(scores) <= 0.05


def test_flicker_breaks_coherence(truth):
    flicker = []
    for clip, prompt in truth:
        clip = clip.copy()
        clip[1::2] = np.asarray(CFG.data.shapes.backgrounds[prompt["background"]], np.uint8)  # object vanishes
        flicker.append((clip, prompt))
    assert judged(flicker) <= 0.1


def test_rejects_wrong_layout():
    with pytest.raises(ValueError, match="frames, height, width, 3"):
        judge_clip(np.zeros((4, 8, 8), np.uint8), {}, CFG.data, CFG.judge)
