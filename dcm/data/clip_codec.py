"""How a clip is stored inside a shard: one lossless PNG "filmstrip" (frames stacked vertically).

Why PNG and not a video codec: it is lossless (the teacher learns from exactly what was generated or
decoded), its bytes are a pure function of the pixels (no encoder version strings or timestamps, so
shards are byte-identical across runs), it compresses the flat shapes domain by more than 10×, it
decodes fast with Pillow, and any image viewer shows a sample. FFV1/x264-lossless would compress real
footage better, but embed encoder metadata and need a demuxer to read one sample.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_clip(clip: np.ndarray, compression: int) -> bytes:
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"a clip must be uint8 (frames, height, width, 3), got {clip.dtype} {clip.shape}")
    frames, height, width, _ = clip.shape
    buffer = io.BytesIO()
    Image.fromarray(clip.reshape(frames * height, width, 3)).save(buffer, format="PNG",
                                                                    compress_level=compression)
    return buffer.getvalue()


def decode_clip(data: bytes, frames: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "PNG":
            raise ValueError(f"clip is {image.format}, expected PNG")
        strip = np.asarray(image.convert("RGB"))
    if strip.shape[0] % frames:
        raise ValueError(f"clip strip of height {strip.shape[0]} does not split into {frames} frames")
    return strip.reshape(frames, strip.shape[0] // frames, strip.shape[1], 3)
