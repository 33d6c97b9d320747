"""The judge's texture sub-score (textured profile): which surface does the object show?

The renderer darkens a texture's dark parts to colour × (1 − amplitude), keeping the hue, so the object's
shading g = 1 − ⟨pixel, colour⟩ / |colour|² reads the texture back (0 where lit, the amplitude where dark).
How strong the shading is separates plain from textured; its correlation between pixels half a period
apart (down, right, and both diagonals) tells the patterns apart without knowing where the pattern
starts, so a generated object anywhere in the frame is judged alike:
    striped (vertical):  +1 down, −1 right, −1 on both diagonals
    checked:             −1 down, −1 right, +1 on both diagonals
    speckled:             0 everywhere (one random value per pixel)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Signatures of the patterned textures at the lags of `lag_offsets`.
SIGNATURES = {"striped": (1.0, -1.0, -1.0, -1.0), "checked": (-1.0, -1.0, 1.0, 1.0), "speckled": (0.0, 0.0, 0.0, 0.0)}


def lag_offsets(period: float) -> list[tuple[int, int]]:
    """(rows, cols) half a period down, right, down-right and down-left."""
    half = max(1, int(round(period / 2.0)))
    return [(half, 0), (0, half), (half, half), (half, -half)]


def shading(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """How much darker than `colour` each pixel is along the colour's own direction (0 = as lit)."""
    return 1.0 - pixels @ colour / max(float(colour @ colour), 1e-12)


def lag_correlation(field: np.ndarray, mask: np.ndarray, offset: tuple[int, int]) -> tuple[float, float]:
    """Sum of centred products over the pixel pairs `offset` apart with both ends in `mask`, and the sum of
    their centred squares (the two sums of a Pearson correlation, kept apart so frames can be pooled)."""
    dr, dc = offset
    h, w = field.shape
    a = (slice(0, h - dr), slice(max(0, -dc), w - max(0, dc)))
    b = (slice(dr, h), slice(max(0, dc), w - max(0, -dc)))
    pairs = mask[a] & mask[b]
    if not pairs.any():
        return 0.0, 0.0
    mean = field[mask].mean()
    first, second = field[a][pairs] - mean, field[b][pairs] - mean
    return float((first * second).sum()), float(0.5 * (first**2 + second**2).sum())


def texture_features(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], period: float) -> tuple[float, np.ndarray]:
    """(std of the shading, correlations at the lags) pooled over frames given as (pixels, object mask,
    object colour). The mask is eroded by a pixel first: edges blend with the background."""
    offsets = lag_offsets(period)
    products, squares = np.zeros(len(offsets)), np.zeros(len(offsets))
    values = []
    for pixels, mask, colour in frames:
        core = ndimage.binary_erosion(mask)
        if core.sum() < 2:
            continue
        field = shading(pixels, colour)
        values.append(field[core])
        for i, offset in enumerate(offsets):
            product, square = lag_correlation(field, core, offset)
            products[i] += product
            squares[i] += square
    if not values:
        return 0.0, np.zeros(len(offsets))
    correlations = np.divide(products, squares, out=np.zeros_like(products), where=squares > 0)
    return float(np.std(np.concatenate(values))), correlations


def texture_probabilities(strength: float, correlations: np.ndarray, strength_ramp: tuple[float, float],
                          temperature: float) -> dict[str, float]:
    """Probability of each texture name: plain by how weak the shading is, the patterns by how close the
    correlations lie to their signatures (softmax over −distance²/temperature)."""
    low, high = strength_ramp
    textured = float(np.clip((strength - low) / (high - low), 0.0, 1.0))
    names = list(SIGNATURES)
    logits = np.asarray([-np.sum((correlations - SIGNATURES[n]) ** 2) / temperature for n in names])
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    return {"plain": 1.0 - textured, **{n: textured * float(w) for n, w in zip(names, weights)}}
