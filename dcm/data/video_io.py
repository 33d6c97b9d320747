"""Decode real videos into fixed-size clips (PyAV), and write clips back out as mp4.

PyAV is imported where a video is read or written, so the procedural (shapes) path runs on machines
that lack it, such as a bare GPU box with only the project's wheels.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from dcm.config import DataConfig, VideosConfig


class VideoError(Exception):
    """A video that cannot give a clip; the message is the reason recorded in the manifest."""


def resize_and_crop(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Scale so the frame covers height×width, then take the centre: no stretching, no borders."""
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)).convert("RGB"))


def _frame_times(container, stream, cfg: VideosConfig):
    """Yield (take_count, frame) pairs: how many times each decoded frame enters the clip sequence.

    With a target fps, a frame is taken once for every target instant it covers (so a low-fps source
    repeats frames and a high-fps source skips them); with a stride, every stride-th frame is taken once.
    """
    rate = float(stream.average_rate or stream.guessed_rate or 0) or None
    step = 1.0 / cfg.sample_fps if cfg.sample_fps else None
    start = next_target = None
    for index, frame in enumerate(container.decode(stream)):
        if step is None:
            yield (1 if index % cfg.frame_stride == 0 else 0), frame
            continue
        time = frame.time if frame.time is not None else (index / rate if rate else None)
        if time is None:
            raise VideoError("frames carry no timestamps and the stream has no frame rate; set data.videos.sample_fps: null")
        if start is None:
            start = next_target = time
        covers_until = time + (0.5 / rate if rate else 0.0)
        takes = 0
        while next_target <= covers_until + 1e-9:
            takes += 1
            next_target += step
        yield takes, frame


def decode_clips(path: str | Path, data: DataConfig) -> list[np.ndarray]:
    """Consecutive clips of `data.frames` frames resized to data.height×data.width, uint8 RGB."""
    cfg = data.videos
    wanted = cfg.clips_per_video or None
    clips: list[np.ndarray] = []
    current: list[np.ndarray] = []
    decoded = taken = 0
    first_time = last_time = None  # frame timestamps, for a "too short" reason a user can check
    import av
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if stream.width and max(stream.width, stream.height) > cfg.max_side:
                raise VideoError(f"frame size {stream.width}x{stream.height} exceeds data.videos.max_side={cfg.max_side}")
            for takes, frame in _frame_times(container, stream, cfg):
                decoded += 1
                taken += takes
                if frame.time is not None:
                    first_time = frame.time if first_time is None else first_time
                    last_time = frame.time
                if not takes:
                    continue
                if not (0 < frame.width <= cfg.max_side and 0 < frame.height <= cfg.max_side):
                    raise VideoError(f"absurd frame size {frame.width}x{frame.height}")
                pixels = resize_and_crop(frame.to_image(), data.height, data.width)
                for _ in range(takes):
                    current.append(pixels)
                    if len(current) == data.frames:
                        clips.append(np.stack(current))
                        current = []
                if wanted and len(clips) >= wanted:
                    break
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        if decoded == 0:
            raise VideoError(f"unreadable: {type(error).__name__}: {error}") from None
        raise VideoError(f"truncated or corrupt after {decoded} frames: {type(error).__name__}: {error}") from None
    if not clips:
        if decoded == 0:
            raise VideoError("no decodable frames")
        raise VideoError(_too_short(decoded, taken, first_time, last_time, data))
    return clips[:wanted] if wanted else clips


def _too_short(decoded: int, taken: int, first_time: float | None, last_time: float | None, data: DataConfig) -> str:
    """Why no clip came out, in the units the user set: the video's duration against what one clip needs."""
    cfg = data.videos
    if cfg.sample_fps:
        timed = first_time is not None and last_time is not None
        lasts = f"lasts {last_time - first_time:.2f} s ({decoded} frames)" if timed else f"has {decoded} frames"
        return (f"too short: the video {lasts}, which data.videos.sample_fps={cfg.sample_fps:g} turns into {taken} "
                f"frames; a clip needs data.frames={data.frames} ({data.frames / cfg.sample_fps:.2f} s at that rate). "
                "Raise sample_fps or lower data.frames to use it")
    return (f"too short: {decoded} frames, every data.videos.frame_stride={cfg.frame_stride}th taken gives {taken}; "
            f"a clip needs data.frames={data.frames}. Lower frame_stride or data.frames to use it")


# Codec and pixel format per container: what ordinary players open.
CONTAINER_CODECS = {
    "mp4": ("libx264", "yuv420p"), "mkv": ("libx264", "yuv420p"), "mov": ("libx264", "yuv420p"),
    "webm": ("libvpx", "yuv420p"), "avi": ("mpeg4", "yuv420p"), "gif": ("gif", "rgb8"),
}


def write_video(path: str | Path, clip: np.ndarray, fps: float, codec: str | None = None,
                options: dict[str, str] | None = None) -> None:
    """Write uint8 (frames, height, width, 3); the codec follows the file extension unless given."""
    import av
    path = Path(path)
    default_codec, pix_fmt = CONTAINER_CODECS.get(path.suffix.lstrip(".").lower(), ("libx264", "yuv420p"))
    codec = codec or default_codec
    if codec == "ffv1":
        pix_fmt = "bgr0"  # lossless RGB: what tests use to check exact frame selection
    if pix_fmt == "yuv420p" and (clip.shape[1] % 2 or clip.shape[2] % 2):
        # 4:2:0 chroma needs even sizes; replicate the last row/column rather than refuse.
        clip = np.pad(clip, ((0, 0), (0, clip.shape[1] % 2), (0, clip.shape[2] % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = clip.shape[2], clip.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options or {})
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
