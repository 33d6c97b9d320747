"""`dcm generate`: one prompt → one mp4, from a distilled student (default: DCM) or the teacher."""

from __future__ import annotations

from pathlib import Path

from dcm.config import ConfigError, DCMConfig
from dcm.data.tensors import video_to_clips
from dcm.data.video_io import write_video
from dcm.pipeline import DCMPipeline
from dcm.sampling import generate
from dcm.schedule import check_step_count, sampling_sigmas
from dcm.stages.checks import check_geometry
from dcm.stages.paths import output_folder
from dcm.stages.teacher import load_teacher
from dcm.train.loop import resolve_device

STUDENTS = ("dcm", "semantic", "lcm", "pcm", "single")


def student_folder(cfg: DCMConfig, model: str) -> Path:
    folder = output_folder(cfg, model) if model in STUDENTS else Path(model)
    if not folder.is_dir():
        hint = ("run the distill stages first (dvc repro)" if model in STUDENTS
                else f"expected teacher, {', '.join(STUDENTS)} or a DCMPipeline folder")
        raise FileNotFoundError(f"model {model!r}: {folder} not found; {hint}")
    return folder


def run_generate(cfg: DCMConfig, model: str, prompt: str, steps: int | None, seed: int, guidance: float | None,
                 out: Path) -> Path:
    sampling = cfg.teacher.sampling
    if steps is None:
        steps = sampling.steps if model == "teacher" else cfg.distill.sample_steps
    try:
        check_step_count(cfg.schedule, steps, "--steps")  # before any model is loaded
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_geometry(cfg)
    device = resolve_device(cfg.teacher.toy.train.device)
    if model == "teacher":
        teacher = load_teacher(cfg, device)
        video = generate(teacher, [prompt], [seed], cfg.data.frames, cfg.data.height, cfg.data.width,
                         sampling_sigmas(cfg.schedule, steps),
                         sampling.guidance_scale if guidance is None else guidance, cfg.teacher.negative_prompt, 1)
    else:
        if guidance is not None:
            raise ValueError("--guidance applies to the teacher only: distilled students have their guidance built in")
        pipe = DCMPipeline.from_pretrained(student_folder(cfg, model), device)
        video = pipe.videos([prompt], [seed], steps, cfg.data.frames, cfg.data.height,
                            cfg.data.width, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(out, video_to_clips(video)[0], sampling.fps, options={"crf": str(sampling.mp4_crf)})
    return out
