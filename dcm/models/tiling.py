"""Which clip sizes a teacher family can take: its VAE's compression and its transformer's patch, read
from the folder's config files alone (no weights), so a bad geometry is refused before any work.

A causal video VAE (Wan, HunyuanVideo, CogVideoX) keeps the first frame and compresses the rest by its
temporal factor: a clip of 1 + k·temporal frames comes back whole, any other length does not. Each
latent axis must then split into whole patches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tiling:
    temporal: int  # the VAE's frame compression (1: none)
    spatial: int  # its height/width compression
    patch: tuple[int, int, int]  # the transformer's (t, h, w) patch
    causal: bool  # frames = 1 + k·temporal

    @property
    def pixel_multiple(self) -> tuple[int, int]:
        return self.spatial * self.patch[1], self.spatial * self.patch[2]

    def frames_work(self, frames: int) -> bool:
        if self.causal:
            return (frames - 1) % self.temporal == 0 and ((frames - 1) // self.temporal + 1) % self.patch[0] == 0
        return frames % (self.temporal * self.patch[0]) == 0


def _near(value: int, works, lowest: int) -> str:
    below = next((v for v in range(value - 1, lowest - 1, -1) if works(v)), None)
    above = next(v for v in range(value + 1, 64 * value + 2) if works(v))
    return f"{below} or {above}" if below is not None else str(above)


def geometry_problem(tiling: Tiling, frames: int, height: int, width: int, who: str) -> str | None:
    """None when data.frames × data.height × data.width tiles; else one line naming the values that would."""
    mh, mw = tiling.pixel_multiple
    wrong = []
    if height % mh:
        wrong.append(f"data.height={height} (a multiple of {mh}: {_near(height, lambda v: v % mh == 0, mh)})")
    if width % mw:
        wrong.append(f"data.width={width} (a multiple of {mw}: {_near(width, lambda v: v % mw == 0, mw)})")
    if not tiling.frames_work(frames):
        rule = (f"1 + a multiple of {tiling.temporal}" if tiling.causal else f"a multiple of {tiling.temporal * tiling.patch[0]}")
        wrong.append(f"data.frames={frames} ({rule}: {_near(frames, tiling.frames_work, 1)})")
    if not wrong:
        return None
    return (f"{who} cannot tile {', '.join(wrong)}: its VAE compresses time ÷{tiling.temporal} and space "
            f"÷{tiling.spatial}, its transformer patch is {'×'.join(map(str, tiling.patch))}")


def read_config(folder: Path, component: str) -> dict:
    path = folder / component / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FileNotFoundError(f"{path}: {error}") from None
