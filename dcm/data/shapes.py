"""The embedded "shapes" domain: a coloured object moving over a plain background.

Every clip is a pure function of (seed, split, index) and the config, so shards are reproducible
byte for byte and any sample can be regenerated on its own. The ground truth travels with the clip,
which lets the judge (`dcm.eval.judge`) score generated clips without a pretrained network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dcm.config import DIRECTION_VECTORS, DataConfig, ShapesConfig

SPLIT_IDS = {"train": 0, "val": 1}

CAPTION_TEMPLATES = (
    "a {colour} {shape} {motion} on a {background} background",
    "a {colour} {shape} {motion} over {background}",
    "{background} background, a {colour} {shape} {motion}",
    "one {colour} {shape} {motion} against a {background} backdrop",
)
MOTION_PHRASES = {
    "left": ("moving left", "sliding to the left", "drifting leftward"),
    "right": ("moving right", "sliding to the right", "drifting rightward"),
    "up": ("moving up", "rising", "drifting upward"),
    "down": ("moving down", "falling", "drifting downward"),
    "up-left": ("moving up and to the left", "drifting up-left"),
    "up-right": ("moving up and to the right", "drifting up-right"),
    "down-left": ("moving down and to the left", "drifting down-left"),
    "down-right": ("moving down and to the right", "drifting down-right"),
    "still": ("standing still", "staying in place", "not moving"),
}


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test in the shape's own frame: (x, y) in [-1, 1]² spans its bounding box, y points down."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 1.0
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if shape == "triangle":  # apex up, base down, as wide as it is tall
        return (y <= 1.0) & (np.abs(x) <= (y + 1.0) / 2.0)
    raise ValueError(f"unknown shape {shape!r}")


def shape_coverage(shape: str, height: int, width: int, cx: float, cy: float, rx: float, ry: float,
                   supersample: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape centred at (cx, cy) with half-extents (rx, ry) in pixels."""
    offsets = (np.arange(supersample) + 0.5) / supersample
    ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    inside = shape_mask(shape, (xs[None, :] - cx) / rx, (ys[:, None] - cy) / ry)
    return inside.reshape(height, supersample, width, supersample).mean(axis=(1, 3))


@dataclass(frozen=True)
class ShapeSample:
    """Ground truth of one clip; stored as the sample's metadata."""

    key: str
    split: str
    index: int
    shape: str
    colour: str
    background: str
    direction: str
    radius: float  # pixels
    speed: float  # pixels per frame
    centres: list[tuple[float, float]]  # per-frame (x, y) in pixels
    caption: str
    heldout: bool

    def metadata(self) -> dict:
        return {"source": "shapes", **asdict(self)}


def _rgb_distance(a, b) -> float:
    return float(np.linalg.norm((np.asarray(a, float) - np.asarray(b, float)) / 255.0))


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], index]))


def draw_sample(seed: int, split: str, index: int, data: DataConfig) -> ShapeSample:
    """Draw the attributes of clip `index` of `split`: train avoids held-out pairs, val draws from all."""
    cfg: ShapesConfig = data.shapes
    rng = sample_rng(seed, split, index)
    heldout = set(cfg.holdout)
    colours, backgrounds = list(cfg.colours), list(cfg.backgrounds)
    while True:  # rejection keeps the draw a pure function of the rng stream
        shape = cfg.shapes[rng.integers(len(cfg.shapes))]
        colour = colours[rng.integers(len(colours))]
        background = backgrounds[rng.integers(len(backgrounds))]
        if _rgb_distance(cfg.colours[colour], cfg.backgrounds[background]) < cfg.min_contrast:
            continue
        if split == "train" and f"{colour} {shape}" in heldout:
            continue
        break
    direction = cfg.directions[rng.integers(len(cfg.directions))]
    side = min(data.height, data.width)
    radius = float(rng.uniform(*cfg.size)) * side
    speed = 0.0 if direction == "still" else float(rng.uniform(*cfg.speed)) * side
    dx, dy = DIRECTION_VECTORS[direction]
    travel_x, travel_y = dx * speed * (data.frames - 1), dy * speed * (data.frames - 1)
    # Start anywhere that keeps the object fully in view for the whole clip.
    x0 = rng.uniform(radius - min(travel_x, 0), data.width - radius - max(travel_x, 0))
    y0 = rng.uniform(radius - min(travel_y, 0), data.height - radius - max(travel_y, 0))
    centres = [(float(x0 + dx * speed * t), float(y0 + dy * speed * t)) for t in range(data.frames)]
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    phrases = MOTION_PHRASES[direction]
    caption = template.format(colour=colour, shape=shape, background=background,
                              motion=phrases[rng.integers(len(phrases))])
    return ShapeSample(
        key=f"{split}-{index:08d}", split=split, index=index, shape=shape, colour=colour,
        background=background, direction=direction, radius=radius, speed=speed, centres=centres,
        caption=caption, heldout=f"{colour} {shape}" in heldout,
    )


def render_clip(sample: ShapeSample, data: DataConfig) -> np.ndarray:
    """The clip as uint8 (frames, height, width, 3) with anti-aliased edges."""
    cfg = data.shapes
    fg = np.asarray(cfg.colours[sample.colour], np.float64)
    bg = np.asarray(cfg.backgrounds[sample.background], np.float64)
    frames = np.empty((data.frames, data.height, data.width, 3), np.uint8)
    for t, (cx, cy) in enumerate(sample.centres):
        cover = shape_coverage(sample.shape, data.height, data.width, cx, cy, sample.radius, sample.radius,
                               cfg.supersample)
        frames[t] = np.rint(cover[..., None] * fg + (1.0 - cover[..., None]) * bg).astype(np.uint8)
    return frames


def make_sample(seed: int, split: str, index: int, data: DataConfig) -> tuple[ShapeSample, np.ndarray]:
    sample = draw_sample(seed, split, index, data)
    return sample, render_clip(sample, data)


def prompt_attributes(sample_metadata: dict) -> dict:
    """What the judge needs from a sample's metadata: the prompted attributes."""
    return {k: sample_metadata[k] for k in ("shape", "colour", "background", "direction")}
