"""Pure metrics on uint8 clips (frames, height, width, 3): fidelity to the teacher, colour saturation,
temporal flicker and the patch grid showing through.

PSNR and SSIM compare a student's clip with the teacher's clip from the same initial noise, so they
measure how well the student reproduces *its teacher*, independent of the judge. Saturation statistics
watch the GAN term's known failure (over-saturated colours). Temporal flicker is VBench's
temporal_flickering formula on the raw clips, so every evaluation has it, with or without vbench.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

SSIM_SIGMA = 1.5  # Wang et al. 2004: 11×11 Gaussian window with σ = 1.5 …
SSIM_TRUNCATE = 3.5  # … i.e. radius 5 = round(3.5·1.5)
SSIM_K1, SSIM_K2 = 0.01, 0.03
OVERSATURATED = 0.95  # HSV saturation above which a pixel counts as clipped


def psnr(clip: np.ndarray, reference: np.ndarray) -> float:
    """10·log10(255² / MSE) over the whole clip; identical clips give inf."""
    mse = float(np.mean((clip.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def ssim(clip: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM over frames and channels (Gaussian window, data range 255)."""
    if clip.shape != reference.shape:
        raise ValueError(f"clips differ in shape: {clip.shape} vs {reference.shape}")
    x, y = clip.astype(np.float64), reference.astype(np.float64)
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    sigma = (0, SSIM_SIGMA, SSIM_SIGMA, 0)  # blur within each frame and channel only

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(index.mean())


def temporal_flicker(clips: np.ndarray) -> float:
    """VBench's temporal_flickering, (255 − mean |frame_t+1 − frame_t|) / 255 per clip, averaged over clips:
    1 for a still clip. VBench reads the frames back from an mp4; this reads them as generated (no codec).
    The shapes move, so compare a student's value with its teacher's, not with 1."""
    frames = np.asarray(clips).astype(np.float64)
    change = np.abs(np.diff(frames, axis=1)).mean(axis=(1, 2, 3, 4))
    return float(np.mean((255.0 - change) / 255.0))


def saturation(clip: np.ndarray) -> np.ndarray:
    """HSV saturation (max − min) / max per pixel, 0 for black."""
    rgb = clip.astype(np.float64) / 255.0
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.where(high > 0, high, 1.0), 0.0)


def saturation_stats(clips: np.ndarray) -> dict[str, float]:
    """Mean saturation and the fraction of clipped (over-saturated) pixels over a batch of clips."""
    values = saturation(np.asarray(clips))
    return {"saturation_mean": float(values.mean()), "oversaturated_fraction": float((values > OVERSATURATED).mean())}


def patch_grid(clips: np.ndarray, period: tuple[int, int]) -> float:
    """How much the transformer's patch grid shows through, in grey levels: per clip, the amplitude of the
    component with the patch's period (pixels per token, (height, width)) in its column means (over frames,
    rows and channels) and in its row means; the larger of the two, averaged over clips. A student whose
    detail expert or GAN works token by token can print faint bands at exactly that period, too faint for
    the judge (RESULTS.md, 2026-12-07). Real detail at that period raises it too: read it against the
    teacher's value on the same prompts."""
    x = np.asarray(clips, dtype=np.float64)
    profiles = ((x.mean(axis=(1, 2, 4)), period[1]), (x.mean(axis=(1, 3, 4)), period[0]))  # columns, rows
    amplitudes = []
    for profile, pixels in profiles:
        size = profile.shape[1]
        if pixels < 2 or size % pixels:
            raise ValueError(f"a patch of {pixels} pixels does not tile {size}: no grid period to measure")
        bin_ = size // pixels
        nyquist = 2 * bin_ == size  # a 2-pixel period: the last bin, which holds its amplitude once, not halved
        amplitudes.append(np.abs(np.fft.rfft(profile, axis=1)[:, bin_]) * (1 if nyquist else 2) / size)
    return float(np.maximum(*amplitudes).mean())
