"""How far generated clips are from real footage as a distribution, with no downloaded network.

FVD and KVD embed clips with a pretrained I3D network, which this project may not download. Instead each
clip becomes a short vector of statistics that real footage and its imitations differ in — colour
(per-channel mean and spread), spatial detail (gradient energy, the share of spectral energy at high
frequency) and motion (frame-to-frame change and how it varies) — and the two sets of vectors are
compared by the unbiased kernel two-sample statistic MMD² with a Gaussian kernel (Gretton et al., 2012),
as KID does for images. MMD² is 0 in expectation when both sets come from one distribution and grows
as they part; with a characteristic kernel it separates any two distributions of these statistics.
It does not see semantics: a clip with the right colours, sharpness and motion of the wrong object
scores well. Features are standardised by the real clips' spread, so no one statistic dominates.
"""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
HIGH_FREQUENCY = 0.5  # of Nyquist: spectral energy above it counts as fine detail
FEATURES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "gradient_energy", "high_frequency_share",
            "motion_mean", "motion_std", "motion_variation")


def clip_features(clips: np.ndarray) -> np.ndarray:
    """(N, frames, H, W, 3) uint8 → (N, len(FEATURES)) float64 statistics, each on a 0..1-ish scale."""
    rgb = np.asarray(clips, dtype=np.float64) / 255.0
    luma = rgb @ LUMA  # (N, F, H, W)
    means = rgb.mean(axis=(1, 2, 3))
    spreads = rgb.std(axis=(1, 2, 3))
    gradient = (np.abs(np.diff(luma, axis=2)).mean(axis=(1, 2, 3)) + np.abs(np.diff(luma, axis=3)).mean(axis=(1, 2, 3)))
    power = np.abs(np.fft.fft2(luma - luma.mean(axis=(2, 3), keepdims=True))) ** 2
    fy = np.abs(np.fft.fftfreq(luma.shape[2]))[:, None] * 2  # 1 at Nyquist
    fx = np.abs(np.fft.fftfreq(luma.shape[3]))[None, :] * 2
    high = np.maximum(fy, fx) > HIGH_FREQUENCY
    high_share = power[..., high].sum(axis=(1, 2)) / np.maximum(power.sum(axis=(1, 2, 3)), 1e-12)
    change = np.abs(np.diff(luma, axis=1)).mean(axis=(2, 3))  # (N, F-1)
    motion_mean = change.mean(axis=1)
    motion_std = change.std(axis=1)
    variation = np.abs(np.diff(change, axis=1)).mean(axis=1) if change.shape[1] > 1 else np.zeros(len(change))
    return np.column_stack([means, spreads, gradient, high_share, motion_mean, motion_std, variation])


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD² with k(a, b) = exp(−|a − b|² / (2·bandwidth²)); each set needs two rows or more."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"MMD² needs at least two samples per set, got {len(x)} and {len(y)}")

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        squared = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-squared / (2.0 * bandwidth ** 2))

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def median_bandwidth(z: np.ndarray) -> float:
    """The median pairwise distance of the pooled samples (the usual heuristic); 1 when all coincide."""
    distances = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    off_diagonal = distances[~np.eye(len(z), dtype=bool)]
    median = float(np.median(off_diagonal)) if off_diagonal.size else 0.0
    return median if median > 0 else 1.0


def feature_mmd(generated: np.ndarray, real: np.ndarray) -> float:
    """MMD² between generated and real clips' statistics, standardised by the real clips' spread, with the
    bandwidth of the pooled set. Lower is closer to real footage; about 0 for a sample of the same footage."""
    fake, true = clip_features(generated), clip_features(real)
    centre, scale = true.mean(axis=0), true.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    fake, true = (fake - centre) / scale, (true - centre) / scale
    return mmd2_unbiased(fake, true, median_bandwidth(np.concatenate([fake, true])))
