"""`dcm generate`: one prompt → one mp4, from the teacher (the DCM student joins with the distill stages)."""

from __future__ import annotations

from pathlib import Path

from dcm.config import DCMConfig
from dcm.data.tensors import video_to_clips
from dcm.data.video_io import write_video
from dcm.sampling import generate
from dcm.schedule import sampling_sigmas
from dcm.train.loop import resolve_device


def generate_to_file(cfg: DCMConfig, model: str, prompt: str, steps: int | None, seed: int,
                     guidance: float | None, out: Path) -> Path:
    from dcm.train.teacher import load_teacher
    sampling = cfg.teacher.sampling
    if model != "teacher":
        raise ValueError(f"model {model!r} is not available yet; only 'teacher' is built")
    teacher = load_teacher(cfg, resolve_device(cfg.teacher.toy.train.device))
    video = generate(teacher, [prompt], [seed], cfg.data.frames, cfg.data.height, cfg.data.width,
                     sampling_sigmas(cfg.schedule, steps or sampling.steps),
                     sampling.guidance_scale if guidance is None else guidance, cfg.teacher.negative_prompt, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(out, video_to_clips(video)[0], sampling.fps, options={"crf": str(sampling.mp4_crf)})
    return out
