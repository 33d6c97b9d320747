"""Pixels ↔ model tensors: uint8 clips (B, F, H, W, 3) and float videos (B, 3, F, H, W) in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch


def clips_to_video(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    clips = torch.as_tensor(np.asarray(clips))
    return clips.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def video_to_clips(video: torch.Tensor) -> np.ndarray:
    pixels = video.detach().float().clamp(-1, 1).add(1.0).mul(127.5).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
