"""The embedded "shapes" domain: a coloured object moving over a plain background. The textured profile
also gives the object a surface (stripes, checks, speckle) named in the caption: detail to get right.

Every clip is a pure function of (seed, split, index) and the config, so shards are reproducible
byte for byte and any sample can be regenerated on its own. The ground truth travels with the clip,
which lets the judge (`dcm.eval.judge`) score generated clips without a pretrained network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dcm.config import DIRECTION_VECTORS, DataConfig, ShapesConfig

SPLIT_IDS = {"train": 0, "val": 1}

CAPTION_TEMPLATES = (  # {thing}: "red circle", or "red striped circle" in the textured profile
    "a {thing} {motion} on a {background} background",
    "a {thing} {motion} over {background}",
    "{background} background, a {thing} {motion}",
    "one {thing} {motion} against a {background} backdrop",
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


def subpixel_grid(height: int, width: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y (pixels) of every sub-sample: (height·supersample, width·supersample) each."""
    offsets = (np.arange(supersample) + 0.5) / supersample
    ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    return np.broadcast_to(xs[None, :], (len(ys), len(xs))), np.broadcast_to(ys[:, None], (len(ys), len(xs)))


def pixel_mean(values: np.ndarray, supersample: int) -> np.ndarray:
    """Sub-sample values averaged back to pixels."""
    height, width = values.shape[0] // supersample, values.shape[1] // supersample
    return values.reshape(height, supersample, width, supersample).mean(axis=(1, 3))


def shape_coverage(shape: str, height: int, width: int, cx: float, cy: float, rx: float, ry: float,
                   supersample: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape centred at (cx, cy) with half-extents (rx, ry) in pixels."""
    xs, ys = subpixel_grid(height, width, supersample)
    return pixel_mean(shape_mask(shape, (xs - cx) / rx, (ys - cy) / ry).astype(np.float64), supersample)


def texture_shade(texture: str, u: np.ndarray, v: np.ndarray, period: float, speckle: np.ndarray) -> np.ndarray:
    """1 where the surface is dark, 0 where it shows its colour, at offsets (u, v) in pixels from the object's
    centre (the texture moves with the object). Stripes are vertical; speckle is one random value per
    pixel-sized cell, read from `speckle` (a square table centred on the object)."""
    if texture == "plain":
        return np.zeros_like(u)
    half = period / 2.0
    if texture == "striped":
        return (np.floor(u / half) % 2).astype(np.float64)
    if texture == "checked":
        return ((np.floor(u / half) + np.floor(v / half)) % 2).astype(np.float64)
    if texture == "speckled":
        centre = speckle.shape[0] // 2
        rows = np.clip(np.floor(v).astype(int) + centre, 0, speckle.shape[0] - 1)
        cols = np.clip(np.floor(u).astype(int) + centre, 0, speckle.shape[1] - 1)
        return speckle[rows, cols]
    raise ValueError(f"unknown texture {texture!r}")


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
    texture: str | None = None  # the textured profile's surface; None where the profile has no textures

    def metadata(self) -> dict:
        fields = asdict(self)
        if self.texture is None:  # the plain profile's metadata stays as it always was
            del fields["texture"]
        return {"source": "shapes", **fields}


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
    motion = phrases[rng.integers(len(phrases))]
    # Drawn last, and only when the profile has textures: the plain profile's draws stay as they were.
    texture = cfg.textures[rng.integers(len(cfg.textures))] if cfg.textures else None
    thing = f"{colour} {shape}" if texture in (None, "plain") else f"{colour} {texture} {shape}"
    caption = template.format(thing=thing, background=background, motion=motion)
    return ShapeSample(
        key=f"{split}-{index:08d}", split=split, index=index, shape=shape, colour=colour,
        background=background, direction=direction, radius=radius, speed=speed, centres=centres,
        caption=caption, heldout=f"{colour} {shape}" in heldout, texture=texture,
    )


def speckle_table(sample: ShapeSample, seed: int, size: int) -> np.ndarray:
    """The sample's own speckle: 0/1 per cell, a pure function of (seed, split, index)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[sample.split], sample.index, 1]))
    return rng.integers(0, 2, (size, size)).astype(np.float64)


def render_clip(sample: ShapeSample, data: DataConfig, seed: int) -> np.ndarray:
    """The clip as uint8 (frames, height, width, 3) with anti-aliased edges (and texture: the object's colour
    times 1 − amplitude·shade, averaged over sub-samples like the edges). `seed` draws the speckle."""
    cfg = data.shapes
    fg = np.asarray(cfg.colours[sample.colour], np.float64)
    bg = np.asarray(cfg.backgrounds[sample.background], np.float64)
    texture = sample.texture or "plain"
    speckle = speckle_table(sample, seed, 2 * int(np.ceil(sample.radius)) + 2) if texture == "speckled" else None
    xs, ys = subpixel_grid(data.height, data.width, cfg.supersample)
    frames = np.empty((data.frames, data.height, data.width, 3), np.uint8)
    for t, (cx, cy) in enumerate(sample.centres):
        inside = shape_mask(sample.shape, (xs - cx) / sample.radius, (ys - cy) / sample.radius).astype(np.float64)
        cover = pixel_mean(inside, cfg.supersample)[..., None]
        if texture == "plain":
            lit = cover
        else:
            shade = texture_shade(texture, xs - cx, ys - cy, cfg.texture_period, speckle)
            lit = pixel_mean(inside * (1.0 - cfg.texture_amplitude * shade), cfg.supersample)[..., None]
        frames[t] = np.rint(lit * fg + (1.0 - cover) * bg).astype(np.uint8)
    return frames


def make_sample(seed: int, split: str, index: int, data: DataConfig) -> tuple[ShapeSample, np.ndarray]:
    sample = draw_sample(seed, split, index, data)
    return sample, render_clip(sample, data, seed)


def prompt_attributes(sample_metadata: dict) -> dict:
    """What the judge needs from a sample's metadata: the prompted attributes."""
    return {k: sample_metadata[k] for k in ("shape", "colour", "background", "direction", "texture")
            if k in sample_metadata}
