"""A network-free judge for the shapes domain: does a clip show what its prompt asked for?

Each sub-score lies in [0, 1]. The overall score is their product: like a person grading the clip, a
wrong colour (or shape, motion, background) fails it however good the rest is. Sub-scores are soft
(softmax over the vocabulary, linear ramps between "fine" and "wrong" thresholds from the config), so
averages over many clips move smoothly as a model improves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from dcm.config import DIRECTION_VECTORS, DataConfig, JudgeConfig
from dcm.data.shapes import shape_coverage
from dcm.eval.texture import texture_features, texture_probabilities

SUB_SCORES = ("colour", "shape", "motion", "background", "object", "coherence")  # and texture, where textured
EIGHT_CONNECTED = np.ones((3, 3), bool)


def ramp_down(value: float, ok: float, bad: float) -> float:
    """1 at or below `ok`, 0 at or above `bad`, linear between."""
    return float(np.clip((bad - value) / (bad - ok), 0.0, 1.0))


def ramp_up(value: float, low: float, high: float) -> float:
    """0 at or below `low`, 1 at or above `high`, linear between."""
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


def palette_probabilities(rgb: np.ndarray, palette: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over -distance²/(2τ²) between one colour and each palette entry (all in [0, 1])."""
    logits = -np.sum((palette - rgb) ** 2, axis=1) / (2.0 * temperature**2)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


@lru_cache(maxsize=None)
def shape_moments(shape: str, resolution: int = 256) -> tuple[float, float, float]:
    """(area, centroid x, centroid y) of a shape in its own [-1, 1]² frame, measured by rasterising it."""
    cover = shape_coverage(shape, resolution, resolution, resolution / 2, resolution / 2,
                           resolution / 2, resolution / 2, 1)
    ys, xs = np.mgrid[0:resolution, 0:resolution]
    to_unit = lambda v: (v + 0.5) / (resolution / 2) - 1.0  # noqa: E731
    total = cover.sum()
    return (4.0 * total / cover.size, float((to_unit(xs) * cover).sum() / total),
            float((to_unit(ys) * cover).sum() / total))


def shape_probabilities(mask: np.ndarray, shapes: list[str], temperature: float, supersample: int) -> np.ndarray:
    """Softmax over the IoU between a binary object mask and each candidate shape fitted to it.

    Each candidate is placed by moments (same area, same centroid) rather than by the bounding box:
    thin tips of small diamonds and triangles vanish under thresholding and would shrink the box.
    """
    rows, cols = np.nonzero(mask)
    area = float(len(rows))
    cx, cy = cols.mean() + 0.5, rows.mean() + 0.5
    ious = []
    for shape in shapes:
        unit_area, ux, uy = shape_moments(shape)
        radius = np.sqrt(area / unit_area)
        template = shape_coverage(shape, *mask.shape, cx - ux * radius, cy - uy * radius, radius, radius,
                                  supersample) >= 0.5
        union = np.logical_or(template, mask).sum()
        ious.append(np.logical_and(template, mask).sum() / union if union else 0.0)
    logits = np.asarray(ious) / temperature
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


@dataclass
class FrameObject:
    """What the judge sees of the object in one frame."""

    mask: np.ndarray
    colour: np.ndarray  # core colour in [0, 1]
    area: float  # fraction of the frame
    centroid: tuple[float, float]  # (x, y) in pixels
    spread: float  # median colour deviation inside the object's core
    extra_objects: int


def background_estimate(clip: np.ndarray, border: float) -> tuple[np.ndarray, float]:
    """Median colour of the border band over all frames, and the median deviation from it."""
    band = max(1, int(round(border * min(clip.shape[1:3]))))
    edge = np.concatenate([
        clip[:, :band].reshape(-1, 3), clip[:, -band:].reshape(-1, 3),
        clip[:, :, :band].reshape(-1, 3), clip[:, :, -band:].reshape(-1, 3),
    ])
    colour = np.median(edge, axis=0)
    spread = float(np.median(np.linalg.norm(edge - colour, axis=1)))
    return colour, spread


def lit_colour(frame: np.ndarray, blob: np.ndarray, quantile: float) -> np.ndarray:
    """A textured object's own colour: inside the blob (a pixel in from its edge, which blends with the
    background), the median of the pixels above `quantile` in brightness along the blob's hue. Texture only
    darkens, and a stripe moving by part of a pixel leaves pixels between lit and dark."""
    inner = ndimage.binary_erosion(blob)
    pixels = frame[inner] if inner.any() else frame[blob]
    typical = np.median(pixels, axis=0)
    brightness = pixels @ (typical / max(float(np.linalg.norm(typical)), 1e-12))
    return np.median(pixels[brightness >= np.quantile(brightness, quantile)], axis=0)


def chroma_spread(pixels: np.ndarray, colour: np.ndarray) -> float:
    """Median deviation from the colour's direction: texture's darkening keeps the hue, noise does not."""
    unit = colour / max(float(np.linalg.norm(colour)), 1e-12)
    return float(np.median(np.linalg.norm(pixels - np.outer(pixels @ unit, unit), axis=1)))


def find_object(frame: np.ndarray, background: np.ndarray, cfg: JudgeConfig,
                dark_share: float | None = None) -> FrameObject | None:
    """The largest blob that stands out from the background. `dark_share` (the textured profile's amplitude):
    the object may carry a texture, so its colour is that of its lit parts, its outline is drawn where the
    dark parts still stand out by half, its holes are filled and its spread ignores shading."""
    textured = dark_share is not None
    distance = np.linalg.norm(frame - background, axis=-1)
    seeds, count = ndimage.label(distance > cfg.foreground_threshold, structure=EIGHT_CONNECTED)
    if count == 0:
        return None
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(distance), seeds, range(1, count + 1))))
    inside = distance[seeds == largest]
    if textured:
        colour = lit_colour(frame, seeds == largest, cfg.lit_quantile)
    else:
        colour = np.median(frame[seeds == largest][inside >= np.median(inside)], axis=0)
    # Half-maximum contour: blur moves edge pixels symmetrically around it, so the size survives blur.
    half = 0.5 * float(np.linalg.norm(colour - background))
    # (textured: never below the seed threshold, or a dark texture close to the background lets noise in)
    outline = (max(0.5 * float(np.linalg.norm(colour * (1.0 - dark_share) - background)), cfg.foreground_threshold)
               if textured else half)
    labels, count = ndimage.label(distance > outline, structure=EIGHT_CONNECTED)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(distance), labels, range(1, count + 1))
    order = np.argsort(sizes)[::-1]
    mask = labels == 1 + order[0]
    extra = int(np.sum(sizes[order[1:]] > cfg.extra_object_ratio * sizes[order[0]]))
    if textured:
        mask = ndimage.binary_fill_holes(mask)
    rows, cols = np.nonzero(mask)
    core = mask & (distance > 1.5 * half)
    core_colours = frame[core] if core.any() else frame[mask]
    spread = (chroma_spread(core_colours, colour) if textured
              else float(np.median(np.linalg.norm(core_colours - colour, axis=1))))
    return FrameObject(mask=mask, colour=colour, area=float(mask.mean()),
                       centroid=(float(cols.mean() + 0.5), float(rows.mean() + 0.5)),
                       spread=spread, extra_objects=extra)


def motion_score(centroids: np.ndarray, direction: str, side: int, cfg: JudgeConfig) -> tuple[float, float]:
    """Score the straight-line velocity fitted to per-frame centroids; returns (score, path jitter)."""
    if len(centroids) < 2:
        return 0.0, float("inf")
    t = np.arange(len(centroids), dtype=float)
    design = np.stack([t, np.ones_like(t)], axis=1)
    fit, *_ = np.linalg.lstsq(design, centroids, rcond=None)
    velocity = fit[0] / side
    jitter = float(np.sqrt(np.mean(np.sum((design @ fit - centroids) ** 2, axis=1)))) / side
    speed = float(np.linalg.norm(velocity))
    moving = ramp_up(speed, cfg.still_speed, cfg.moving_speed)
    if direction == "still":
        return 1.0 - moving, jitter
    wanted = np.asarray(DIRECTION_VECTORS[direction])
    cosine = float(velocity @ wanted) / speed if speed > 0 else -1.0
    ok_deg, bad_deg = cfg.direction_degrees
    aligned = ramp_up(cosine, np.cos(np.radians(bad_deg)), np.cos(np.radians(ok_deg)))
    return moving * aligned, jitter


@dataclass
class JudgeScores:
    colour: float
    shape: float
    motion: float
    background: float
    object: float
    coherence: float
    overall: float
    texture: float | None = None  # the textured profile only
    contrast: float | None = None  # how strongly the object's surface is shaded (texture_features' strength):
    # a diagnostic, not part of `overall`; a student whose patterns fade reads lower than its teacher here

    def as_dict(self) -> dict[str, float]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def judge_clip(clip: np.ndarray, prompt: dict, data: DataConfig, cfg: JudgeConfig) -> JudgeScores:
    """Score a uint8 clip (frames, height, width, 3) against prompted shape/colour/background/direction."""
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"judge expects a (frames, height, width, 3) clip, got shape {clip.shape}")
    pixels = clip.astype(np.float64) / 255.0
    palette_of = lambda table: np.asarray(list(table.values()), float) / 255.0  # noqa: E731
    colours, backgrounds = data.shapes.colours, data.shapes.backgrounds

    bg, bg_spread = background_estimate(pixels, cfg.border)
    bg_prob = palette_probabilities(bg, palette_of(backgrounds), cfg.background_temperature)
    background = float(bg_prob[list(backgrounds).index(prompt["background"])]) * ramp_down(bg_spread, *cfg.background_spread)

    textured = bool(data.shapes.textures)
    dark_share = data.shapes.texture_amplitude if textured else None
    objects = [find_object(frame, bg, cfg, dark_share) for frame in pixels]
    found = [o for o in objects if o is not None]
    n = len(objects)
    lo_area, hi_area = cfg.object_area
    object_score = sum(
        (lo_area <= o.area <= hi_area) * (o.extra_objects == 0) * ramp_down(o.spread, *cfg.object_spread)
        for o in found) / n
    colour_index = list(colours).index(prompt["colour"])
    colour = sum(palette_probabilities(o.colour, palette_of(colours), cfg.colour_temperature)[colour_index]
                 for o in found) / n
    shapes = data.shapes.shapes
    shape = sum(shape_probabilities(o.mask, shapes, cfg.shape_temperature, data.shapes.supersample)[
        shapes.index(prompt["shape"])] for o in found) / n
    side = min(clip.shape[1:3])
    motion, jitter = motion_score(np.asarray([o.centroid for o in found]), prompt["direction"], side, cfg)

    if len(found) >= 2:
        areas = np.asarray([o.area for o in found])
        tints = np.asarray([o.colour for o in found])
        drift = float(np.max(np.linalg.norm(tints - np.median(tints, axis=0), axis=1)))
        coherence = (len(found) / n * ramp_down(float(areas.std() / areas.mean()), *cfg.area_variation)
                     * ramp_down(drift, *cfg.colour_drift) * ramp_down(jitter, *cfg.path_jitter))
    else:
        coherence = 0.0
    parts = dict(colour=float(colour), shape=float(shape), motion=motion, background=background,
                 object=float(object_score), coherence=coherence)
    contrast = None
    if textured:  # the share of frames with an object, times the surface's probability over those frames
        contrast, correlations = texture_features(
            [(frame, o.mask, o.colour) for frame, o in zip(pixels, objects) if o is not None],
            data.shapes.texture_period)
        chances = texture_probabilities(contrast, correlations, cfg.texture_strength, cfg.texture_temperature)
        parts["texture"] = len(found) / n * chances[prompt.get("texture", "plain")]
    return JudgeScores(**parts, overall=float(np.prod(list(parts.values()))), contrast=contrast)


def judge_many(clips, prompts: list[dict], data: DataConfig, cfg: JudgeConfig) -> dict[str, float]:
    """Mean of every sub-score and the overall score over clips judged against their prompts; on the textured
    profile also, for each surface's clips, `texture_<surface>` (its texture score: a student that loses only the
    fine ones shows it there, where the mean over all four hides which) and `contrast_<surface>` (how strongly
    the surface is shaded: below the teacher's, the pattern fades; the same, it is drawn but wrong)."""
    scores = [judge_clip(clip, prompt, data, cfg).as_dict() for clip, prompt in zip(clips, prompts)]
    means = {key: float(np.mean([s[key] for s in scores])) for key in scores[0] if key != "contrast"}
    for surface in data.shapes.textures:
        mine = [s for s, p in zip(scores, prompts) if p.get("texture", "plain") == surface]
        if mine:
            means[f"texture_{surface}"] = float(np.mean([s["texture"] for s in mine]))
            means[f"contrast_{surface}"] = float(np.mean([s["contrast"] for s in mine]))
    return means
