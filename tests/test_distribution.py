"""The network-free distribution distance: features on hand-made clips, MMD² against hand-computed values."""

import math

import numpy as np
import pytest

from dcm.eval.distribution import FEATURES, clip_features, feature_mmd, median_bandwidth, mmd2_unbiased

pytestmark = pytest.mark.fast


def test_mmd2_matches_hand_computed_values():
    # k = exp(−d²/2): within x k(0,1) = e^−0.5, within y k(0,2) = e^−2, across (1 + e^−2 + e^−0.5 + e^−0.5)/4
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    across = (1 + math.exp(-2) + 2 * math.exp(-0.5)) / 4
    assert mmd2_unbiased(x, y, 1.0) == pytest.approx(math.exp(-0.5) + math.exp(-2) - 2 * across)
    far = mmd2_unbiased(np.zeros((2, 1)), np.full((2, 1), 3.0), 1.0)  # 1 + 1 − 2·e^−4.5
    assert far == pytest.approx(2 - 2 * math.exp(-4.5))
    with pytest.raises(ValueError, match="at least two"):
        mmd2_unbiased(x[:1], y, 1.0)


def test_median_bandwidth():
    assert median_bandwidth(np.array([[0.0], [3.0], [4.0]])) == pytest.approx(3.0)  # distances 3, 4, 1 (twice each)
    assert median_bandwidth(np.zeros((3, 2))) == 1.0


def test_features_of_hand_made_clips():
    grey = np.full((1, 4, 8, 8, 3), 128, np.uint8)
    checks = np.indices((8, 8)).sum(axis=0) % 2 * 255  # a one-pixel checkerboard: all energy at Nyquist
    board = np.repeat(np.repeat(checks[None, None, :, :, None], 4, axis=1), 3, axis=4).astype(np.uint8)
    blink = board.copy()
    blink[0, 1::2] = 255 - blink[0, 1::2]  # the board inverts every other frame
    names = dict(zip(FEATURES, clip_features(np.concatenate([grey, board, blink])).T))
    assert names["mean_r"] == pytest.approx([128 / 255, 0.5, 0.5])
    assert names["std_g"] == pytest.approx([0.0, 0.5, 0.5])
    assert names["gradient_energy"] == pytest.approx([0.0, 2.0, 2.0])  # |Δ| = 1 between every pair of neighbours
    assert names["high_frequency_share"] == pytest.approx([0.0, 1.0, 1.0])
    assert names["motion_mean"] == pytest.approx([0.0, 0.0, 1.0])
    assert names["motion_variation"] == pytest.approx([0.0, 0.0, 0.0])


def test_feature_mmd_is_near_zero_for_the_same_footage_and_large_for_blurred_copies():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (16, 4, 16, 16, 3)).astype(np.uint8)  # fine noise texture, flickering
    same_kind = rng.integers(0, 256, (16, 4, 16, 16, 3)).astype(np.uint8)
    blurred = np.repeat(real.mean(axis=(2, 3), keepdims=True), 16, axis=2).repeat(16, axis=3).astype(np.uint8)
    close, far = feature_mmd(same_kind, real), feature_mmd(blurred, real)
    assert abs(close) < 0.05 and far > 0.5, (close, far)
