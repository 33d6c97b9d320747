"""Fidelity and saturation metrics against values computed by hand."""

import math

import numpy as np
import pytest

from dcm.eval.fidelity import patch_grid, psnr, saturation, saturation_stats, ssim, temporal_flicker

pytestmark = pytest.mark.fast


def test_psnr_by_hand():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 10  # one pixel value off by 10 in 96: MSE = 100 / 96
    assert psnr(b, a) == pytest.approx(10 * math.log10(255 ** 2 / (100 / 96)))
    assert psnr(a, a) == math.inf


def test_ssim_identity_constant_shift_and_noise():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    assert ssim(clip, clip) == pytest.approx(1.0)
    # two flat images: only the luminance term is left, (2·μx·μy + c1) / (μx² + μy² + c1)
    flat_a, flat_b = np.full((1, 8, 8, 1), 100, np.uint8), np.full((1, 8, 8, 1), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(flat_a, flat_b) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))
    noisy = np.clip(clip + rng.normal(0, 40, clip.shape), 0, 255).astype(np.uint8)
    assert 0 < ssim(noisy, clip) < 0.9
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(clip, clip[:1])


def test_saturation_by_hand():
    pixels = np.array([[[[255, 0, 0], [128, 128, 128], [0, 0, 0], [200, 100, 100]]]], np.uint8)
    assert saturation(pixels)[0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.5])
    stats = saturation_stats(pixels)
    assert stats["saturation_mean"] == pytest.approx(1.5 / 4)
    assert stats["oversaturated_fraction"] == pytest.approx(0.25)


def test_temporal_flicker_by_hand():
    still = np.full((1, 3, 2, 2, 3), 77, np.uint8)
    assert temporal_flicker(still) == 1.0
    blink = np.zeros((1, 3, 2, 2, 3), np.uint8)
    blink[0, 1] = 51  # frames 0 → 51 → 0: every pixel changes by 51 twice, mean change 51 = 0.2·255
    ramp = np.zeros((1, 3, 2, 2, 3), np.uint8)
    ramp[0, 2, 0, 0, 0] = 255  # one value of 12 changes by 255 in the second pair only: mean (0 + 255/12) / 2
    assert temporal_flicker(blink) == pytest.approx(0.8)
    assert temporal_flicker(ramp) == pytest.approx(1 - (255 / 12 / 2) / 255)
    assert temporal_flicker(np.concatenate([blink, still])) == pytest.approx(0.9)  # the mean over clips


def test_patch_grid_by_hand():
    frames, height, width = 3, 8, 16
    x, y = np.arange(width), np.arange(height)
    flat = np.full((1, frames, height, width, 3), 100.0)
    assert patch_grid(flat, (4, 4)) == pytest.approx(0.0)
    # vertical bands, amplitude 10 at the 4-pixel period, any phase; horizontal ones of amplitude 3
    columns = flat + 10 * np.sin(2 * np.pi * x / 4 + 0.3)[None, None, None, :, None]
    both = columns + 3 * np.cos(2 * np.pi * y / 4)[None, None, :, None, None]
    assert patch_grid(columns, (4, 4)) == pytest.approx(10.0) and patch_grid(both, (4, 4)) == pytest.approx(10.0)
    # bands of another period do not count; a 2-pixel period is the spectrum's last bin, (−1)^y of amplitude 5
    assert patch_grid(flat + 10 * np.cos(2 * np.pi * x / 8)[None, None, None, :, None], (4, 4)) == pytest.approx(0.0)
    assert patch_grid(flat + 5 * (-1.0) ** y[None, None, :, None, None], (2, 2)) == pytest.approx(5.0)
    # the mean over clips, and a grid that does not tile the clip is refused
    assert patch_grid(np.concatenate([columns, flat]), (4, 4)) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="does not tile"):
        patch_grid(flat, (3, 4))

