"""The textured profile: surfaces drawn and named in the caption, and the judge's texture sub-score.

Hand-computed math first, then calibration on 60 held-out-seed clips of the profile (means): ground
truth ≥ 0.95 overall and on every sub-score; the same clips against a wrong texture ≤ 0.10; additive
Gaussian noise σ=0.05 ≥ 0.90; a Gaussian blur of σ=0.8 px erases checks and speckle (their texture
score ≤ 0.3): the detail the textured profile exists to measure.
"""

import numpy as np
import pytest
from scipy import ndimage

from dcm.config import TEXTURE_NAMES, load_config
from dcm.data.shapes import draw_sample, texture_shade
from dcm.eval.judge import judge_clip, judge_many
from dcm.eval.texture import SIGNATURES, lag_correlation, shading, texture_probabilities
from tests.conftest import REPO, ground_truth_clips

pytestmark = pytest.mark.fast

CFG = load_config(REPO / "params.yaml", ["data.shapes.textures=[plain,striped,checked,speckled]"])
N = 60


@pytest.fixture(scope="module")
def truth():
    return ground_truth_clips(CFG.data, N)


def judged(pairs, key="overall"):
    return float(np.mean([judge_clip(c, p, CFG.data, CFG.judge).as_dict()[key] for c, p in pairs]))


def test_texture_shade_by_hand():
    u = np.array([0.5, 1.5, 2.5, 3.5, -0.5])  # period 4: dark from 2 to 4 and from -2 to 0
    assert texture_shade("striped", u, np.zeros_like(u), 4.0, None).tolist() == [0, 0, 1, 1, 1]
    assert texture_shade("checked", u, np.full_like(u, 2.5), 4.0, None).tolist() == [1, 1, 0, 0, 0]
    table = np.arange(16.0).reshape(4, 4)  # centre (2, 2): offset (u, v) = (-1, 1) reads row 3, col 1
    assert texture_shade("speckled", np.array([-0.5]), np.array([1.2]), 4.0, table).tolist() == [13.0]
    assert not texture_shade("plain", u, u, 4.0, None).any()


def test_shading_reads_back_the_darkening():
    colour = np.array([0.8, 0.4, 0.2])
    pixels = np.stack([colour, 0.6 * colour])
    assert shading(pixels, colour) == pytest.approx([0.0, 0.4])


def test_lag_correlation_by_hand():
    field = np.array([[0.0, 1.0, 0.0, 1.0]] * 3)  # stripes one pixel wide: right by 1 flips, down keeps
    mask = np.ones_like(field, bool)
    product, square = lag_correlation(field, mask, (0, 1))  # 9 pairs of (−½)(½): −9/4; squares 9 × ¼
    assert (product, square) == pytest.approx((-2.25, 2.25))
    product, square = lag_correlation(field, mask, (1, 0))  # 8 pairs, each the same value twice
    assert product / square == pytest.approx(1.0)
    assert lag_correlation(field, np.zeros_like(mask), (1, 0)) == (0.0, 0.0)


def test_texture_probabilities_by_hand():
    weak = texture_probabilities(0.0, np.zeros(4), (0.1, 0.2), 0.3)
    assert weak["plain"] == 1.0 and set(weak) == set(TEXTURE_NAMES)
    # halfway up the strength ramp, exactly on the stripes' signature: its distances² to checks
    # 4 + 0 + 4 + 4 = 12 and to speckle 4; weights 1, e^(−12/τ), e^(−4/τ)
    half = texture_probabilities(0.15, np.asarray(SIGNATURES["striped"]), (0.1, 0.2), 2.0)
    weights = np.array([1.0, np.exp(-6.0), np.exp(-2.0)])
    assert half["plain"] == pytest.approx(0.5)
    assert half["striped"] == pytest.approx(0.5 * weights[0] / weights.sum())
    assert sum(half.values()) == pytest.approx(1.0)


def test_captions_name_the_texture_and_every_texture_is_drawn():
    samples = [draw_sample(0, "train", i, CFG.data) for i in range(200)]
    assert {s.texture for s in samples} == set(CFG.data.shapes.textures)
    for s in samples:
        assert (s.texture in s.caption) == (s.texture != "plain")
        assert s.metadata()["texture"] == s.texture
    plain = load_config(REPO / "params.yaml").data
    assert "texture" not in draw_sample(0, "train", 0, plain).metadata()


def test_textured_ground_truth_scores_high(truth):
    scores = [judge_clip(c, p, CFG.data, CFG.judge).as_dict() for c, p in truth]
    assert {p["texture"] for _, p in truth} == set(TEXTURE_NAMES)
    for key in ("overall", "colour", "shape", "motion", "background", "object", "coherence", "texture"):
        assert np.mean([s[key] for s in scores]) >= 0.95, key


def test_wrong_texture_scores_low(truth):
    wrong = []
    for i, (clip, prompt) in enumerate(truth):
        others = [t for t in CFG.data.shapes.textures if t != prompt["texture"]]
        wrong.append((clip, {**prompt, "texture": others[i % len(others)]}))
    assert judged(wrong) <= 0.10


def test_noise_keeps_the_texture_and_blur_erases_fine_detail(truth):
    rng = np.random.default_rng(1)
    noisy = [(np.clip(c + rng.normal(0, 0.05 * 255, c.shape), 0, 255).round().astype(np.uint8), p) for c, p in truth]
    assert judged(noisy) >= 0.90
    fine = [(c, p) for c, p in truth if p["texture"] in ("checked", "speckled")]
    blurred = [(ndimage.gaussian_filter(c.astype(float), (0, 0.8, 0.8, 0)).round().astype(np.uint8), p)
               for c, p in fine]
    assert judged(fine, "texture") >= 0.95 and judged(blurred, "texture") <= 0.3


def test_judge_many_breaks_the_texture_score_down_by_surface(truth):
    # blur only the checked clips: their own score falls, the other surfaces' stay where they were
    blurred = [(ndimage.gaussian_filter(c.astype(float), (0, 0.8, 0.8, 0)).round().astype(np.uint8)
                if p["texture"] == "checked" else c, p) for c, p in truth]
    clips, prompts = zip(*blurred)
    means = judge_many(list(clips), list(prompts), CFG.data, CFG.judge)
    checked = [judge_clip(c, p, CFG.data, CFG.judge).texture for c, p in blurred if p["texture"] == "checked"]
    assert means["texture_checked"] == pytest.approx(np.mean(checked)) and means["texture_checked"] <= 0.3
    for surface in ("plain", "striped", "speckled"):
        assert means[f"texture_{surface}"] >= 0.9, surface
    plain_profile = load_config(REPO / "params.yaml").data
    assert not any(key.startswith(("texture", "contrast")) for key in judge_many(list(clips[:2]), list(prompts[:2]),
                                                                                 plain_profile, CFG.judge))


def test_contrast_by_surface_tells_a_fading_pattern_from_a_wrong_one(truth):
    # a speckle faded to half its depth: that surface's contrast halves, the others' stay; not part of overall
    def faded(clip, prompt):  # every shaded object pixel moved halfway back to the lit colour
        if prompt["texture"] != "speckled":
            return clip
        colour = np.asarray(CFG.data.shapes.colours[prompt["colour"]], float) / 255
        background = np.asarray(CFG.data.shapes.backgrounds[prompt["background"]], float) / 255
        pixels = clip / 255.0
        shade = shading(pixels, colour)[..., None]
        on_object = (np.abs(pixels - background).sum(-1, keepdims=True) > 0.1) & (shade > 0)
        return (255 * np.where(on_object, pixels + shade / 2 * colour, pixels)).round().astype(np.uint8)
    clips, prompts = zip(*truth)
    before = judge_many(list(clips), list(prompts), CFG.data, CFG.judge)
    after = judge_many([faded(c, p) for c, p in truth], list(prompts), CFG.data, CFG.judge)
    assert before["contrast_speckled"] > 0.05 and before["contrast_plain"] < 0.5 * before["contrast_speckled"]
    assert after["contrast_speckled"] == pytest.approx(before["contrast_speckled"] / 2, rel=0.25)
    for surface in ("plain", "striped", "checked"):
        assert after[f"contrast_{surface}"] == pytest.approx(before[f"contrast_{surface}"]), surface
    assert "contrast" not in before


def test_texture_settings_that_cannot_work_are_refused():
    from dcm.config import ConfigError
    for override, message in (("data.shapes.texture_period=3", "multiple of 2"),
                              ("judge.texture_strength=[0.2,0.1]", "texture_strength must be")):
        with pytest.raises(ConfigError, match=message):
            load_config(REPO / "params.yaml", [override])
