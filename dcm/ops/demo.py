"""`dcm demo`: a local web page (Gradio) for the registered students. Pick the champion or any version, type a
prompt, choose the step count, and see the student's clip beside the teacher's (same prompt, same noise),
with each one's latency and the speedup.

The teacher is the pipeline's (`teacher` stage output) with its reference sampler (teacher.sampling); each
version is fetched from the MLflow registry once and kept for the page's lifetime. Bad input (an empty or
overlong prompt, a step count the student's segments cannot hold) is answered with a visible message.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr

from dcm.config import DCMConfig
from dcm.data.tensors import video_to_clips
from dcm.data.video_io import write_video
from dcm.errors import StageError
from dcm.ops.registry import download_version, model_name, registered_versions
from dcm.pipeline import DCMPipeline
from dcm.sampling import generate
from dcm.schedule import inference_sigmas, sampling_sigmas
from dcm.stages.teacher import load_teacher
from dcm.train.loop import resolve_device

CHAMPION_CHOICE = "champion"


class DemoInputError(ValueError):
    """What the person typed or chose cannot be generated; the message says why and what works."""


class DemoModels:
    """The teacher and the registered versions, each loaded on first use and kept."""

    def __init__(self, cfg: DCMConfig, work: Path):
        self.cfg, self.work = cfg, work
        self.device = resolve_device(cfg.evaluate.device)
        self._teacher = None
        self._students: dict[int, DCMPipeline] = {}

    def choices(self) -> list[str]:
        versions, champion = registered_versions(self.cfg)
        if not versions:
            raise StageError(f"{model_name(self.cfg)} has no registered version: run the pipeline first (make run)")
        return ([CHAMPION_CHOICE] if champion is not None else []) + [f"version {v}" for v in versions]

    def student(self, choice: str) -> tuple[int, DCMPipeline]:
        requested = None if choice == CHAMPION_CHOICE else int(choice.removeprefix("version "))
        _, champion = registered_versions(self.cfg)
        version = champion if requested is None else requested
        if version not in self._students:
            version, folder = download_version(self.cfg, self.work / f"version-{version}", version)
            self._students[version] = DCMPipeline.from_pretrained(folder, self.device, detail_weights="merged")
        return version, self._students[version]

    def teacher(self):
        if self._teacher is None:
            self._teacher = load_teacher(self.cfg, self.device)
        return self._teacher


def check_request(cfg: DCMConfig, pipe: DCMPipeline, prompt: str, steps: int) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise DemoInputError("Type a prompt first, e.g. \"a red circle moving left on a black background\".")
    if len(prompt) > cfg.serving.max_prompt_chars:
        raise DemoInputError(f"The prompt has {len(prompt)} characters; the limit is {cfg.serving.max_prompt_chars} "
                             "(serving.max_prompt_chars).")
    try:  # each expert's segment holds a limited number of the teacher's nodes
        inference_sigmas(pipe.schedule, steps, pipe.edges)
    except ValueError as error:
        raise DemoInputError(f"{steps} steps do not fit this student: {error}.") from None
    return prompt


def generate_pair(models: DemoModels, choice: str, prompt: str, steps: int, seed: int) -> tuple[str, str, str]:
    """(student mp4, teacher mp4, markdown with latency and speedup) for one prompt from one seeded noise."""
    cfg, sampling = models.cfg, models.cfg.teacher.sampling
    version, pipe = models.student(choice)
    prompt = check_request(cfg, pipe, prompt, int(steps))
    d = cfg.data
    start = time.perf_counter()
    student = pipe.videos([prompt], [seed], int(steps), d.frames, d.height, d.width, 1)
    student_s = time.perf_counter() - start
    start = time.perf_counter()
    teacher = generate(models.teacher(), [prompt], [seed], d.frames, d.height, d.width,
                       sampling_sigmas(cfg.schedule, sampling.steps), sampling.guidance_scale,
                       cfg.teacher.negative_prompt, 1)
    teacher_s = time.perf_counter() - start
    out = Path(tempfile.mkdtemp(dir=models.work))
    paths = []
    for name, video in (("student", student), ("teacher", teacher)):
        paths.append(str(out / f"{name}.mp4"))
        write_video(Path(paths[-1]), video_to_clips(video)[0], sampling.fps, options={"crf": str(sampling.mp4_crf)})
    summary = "\n".join([
        f"**{model_name(cfg)} version {version}**, seed {seed}, on {models.device}", "",
        "| model | steps | latency |", "|---|---|---|",
        f"| student | {int(steps)} | {student_s:.2f} s |",
        f"| teacher | {sampling.steps} (CFG {sampling.guidance_scale:g}) | {teacher_s:.2f} s |", "",
        f"Speedup: **{teacher_s / student_s:.1f}×**"])
    return paths[0], paths[1], summary


def build_page(models: DemoModels) -> gr.Blocks:
    choices = models.choices()
    limits = models.cfg.serving

    def on_generate(choice, prompt, steps, seed):
        try:
            return generate_pair(models, choice, prompt, int(steps), int(seed))
        except (DemoInputError, StageError, FileNotFoundError) as error:
            raise gr.Error(str(error)) from None
        except Exception as error:  # the page shows a message, never a stack trace (the terminal keeps it)
            raise gr.Error(f"Generation failed: {type(error).__name__}: {error}") from error

    with gr.Blocks(title="dcm demo") as page:
        gr.Markdown(f"# {model_name(models.cfg)}: the distilled student beside its teacher")
        with gr.Row():
            version = gr.Dropdown(choices, value=choices[0], label="Model version", elem_id="version")
            steps = gr.Slider(1, limits.max_steps, value=limits.default_steps, step=1, label="Student steps",
                              elem_id="steps")
            seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
        prompt = gr.Textbox(label="Prompt", placeholder="a red circle moving left on a black background",
                            elem_id="prompt")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            student = gr.Video(label="Student", elem_id="student", autoplay=True, loop=True)
            teacher = gr.Video(label="Teacher", elem_id="teacher", autoplay=True, loop=True)
        summary = gr.Markdown(elem_id="summary")
        button.click(on_generate, [version, prompt, steps, seed], [student, teacher, summary])
    return page


def serve(cfg: DCMConfig, host: str, port: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dcm-demo-") as work:
        models = DemoModels(cfg, Path(work))
        page = build_page(models)
        print(f"dcm demo: http://{host}:{port} (Ctrl-C stops it)", flush=True)
        page.launch(server_name=host, server_port=port, show_error=True, allowed_paths=[work])
