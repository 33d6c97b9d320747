"""Stage `evaluate`: the teacher (reference sampler, CFG), the DCM student at each configured step count
and every baseline present, all from the same prompts, seeds and initial noise, scored by the judge
(where the prompts carry shapes ground truth), the distance to held-out real clips, the real vbench
package, fidelity to the teacher (PSNR/SSIM), saturation, flicker, and latency measured in the same run.

Outputs in `evaluate.out_dir`: metrics.json (DVC metrics), quality.csv (DVC plots), report.md, charts
(PNG), samples.png (one row per model and prompt) and vbench/ (the clips vbench scored, its logs).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dcm.config import DCMConfig, config_to_dict
from dcm.data.tensors import video_to_clips
from dcm.errors import StageError
from dcm.eval.fidelity import psnr, ssim
from dcm.eval.prompts import evaluation_prompts, real_clips
from dcm.eval.report import CHARTS, GRID_FILE, QUALITY, REPORT_FILE, TABLE_FILE, write_report
from dcm.eval.scores import clip_scores
from dcm.eval.row_cache import ROWS_DIR, load_row, row_fingerprint, save_row
from dcm.eval.vbench_scores import vbench_scores
from dcm.eval.vbench_weights import check_weights, stand_in_dimensions
from dcm.io import remove_orphaned_temporaries, sha256_file, write_json_atomic
from dcm.models.family import folder_hash
from dcm.pipeline import DCMPipeline
from dcm.progress import progress
from dcm.sampling import generate
from dcm.schedule import reference_pcm_sigmas, sampling_sigmas
from dcm.stages.checks import pixel_patch
from dcm.stages.paths import (BASELINES_DIR, EVAL_METRICS, MANIFEST, OUTPUT_NAMES, TEACHER_MODEL, output_folder,
                              shard_manifest)
from dcm.stages.spec import Output, StageSpec
from dcm.stages.teacher import load_teacher, teacher_content_hash
from dcm.stock_export import INFO
from dcm.train.loop import resolve_device

METRICS, TABLE, VBENCH_DIR = EVAL_METRICS, TABLE_FILE, "vbench"
ROW_POLL_S = 1.0  # how often a worker looks for a row another worker makes
SPEC = StageSpec(
    name="evaluate", command="dcm evaluate", flow="dcm.ops.flows.evaluate",
    params=("seed", "data", "schedule", "judge", "distill.baselines", "teacher.sampling", "teacher.negative_prompt",
            "teacher.max_text_tokens", "evaluate", "registry.gates"),
    deps=("${evaluate.prompt_file}", f"${{shard.dir}}/{MANIFEST}", f"${{teacher.out_dir}}/{TEACHER_MODEL}", f"${{teacher.out_dir}}/{MANIFEST}",
          f"${{distill.out_dir}}/{OUTPUT_NAMES['detail']}", f"${{distill.out_dir}}/{BASELINES_DIR}"),
    outs=(Output(f"${{evaluate.out_dir}}/{GRID_FILE}", cache=False),
          Output(f"${{evaluate.out_dir}}/{REPORT_FILE}", cache=False),
          Output(f"${{evaluate.out_dir}}/{VBENCH_DIR}"),
          Output(f"${{evaluate.out_dir}}/{ROWS_DIR}", persist=True,
                 note="finished rows survive a kill; reused only when inputs, code and device match")),
    metrics=(Output(f"${{evaluate.out_dir}}/{METRICS}", cache=False),),
    plots=(Output(f"${{evaluate.out_dir}}/{TABLE}", cache=False, plot={"x": "steps", "y": QUALITY, "template": "by_model",  # .dvc/plots/by_model.json: a series per model
                                                                    "y_label": "the active gate's primary metric"}),
           *(Output(f"${{evaluate.out_dir}}/{metric}.png", cache=False) for metric, _ in CHARTS)),
    note="the prompt file is tracked always (read only with prompt_source: file), so edits re-run evaluate")


REFERENCE_PLACEMENT = "_reference"  # a PCM student's rows at the reference scheduler's step placement: pcm_reference_4


def _timed(make: Callable[[], torch.Tensor], repeats: int, count: int) -> tuple[torch.Tensor, float]:
    """Run `make` `repeats` times; return its output and the median seconds per clip."""
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = make()
        seconds.append((time.perf_counter() - start) / count)
    return out, statistics.median(seconds)


def score(cfg: DCMConfig, clips: np.ndarray, prompts: list[dict], reference: np.ndarray | None, real: np.ndarray,
          name: str, device: torch.device, out: Path) -> dict[str, float]:
    """clip_scores (the judge where prompts carry ground truth), vbench, and fidelity to the teacher's clips."""
    metrics = clip_scores(clips, prompts, real, cfg.data, cfg.judge, pixel_patch(cfg))
    metrics |= vbench_scores(clips, [p["caption"] for p in prompts], name, cfg.evaluate.vbench,
                             out / VBENCH_DIR, device.type, cfg.data.fps)
    if reference is not None:
        metrics["psnr_vs_teacher"] = float(np.mean([psnr(c, r) for c, r in zip(clips, reference)]))
        metrics["ssim_vs_teacher"] = float(np.mean([ssim(c, r) for c, r in zip(clips, reference)]))
    return metrics


def run_evaluate_stage(cfg: DCMConfig, on_result: Callable[[str, dict], None] | None = None) -> dict | None:
    """The DCM student and the baselines listed in distill.baselines, into evaluate.out_dir. Under several
    workers (RANK/WORLD_SIZE, as the launcher sets them) each makes every N-th row and only rank 0 returns."""
    check_weights(cfg.evaluate.vbench.dimensions)  # settings first: a missing file says so at once
    students = {name: output_folder(cfg, name) for name in ["dcm", *cfg.distill.baselines]}
    for name, folder in students.items():
        if not folder.is_dir():
            stage = "distill_detail" if name == "dcm" else "distill_baselines"
            raise StageError(f"{folder} not found: evaluation needs the {name} student; run the distill stages "
                             f"first (dvc repro {stage})")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return evaluate_students(cfg, students, Path(cfg.evaluate.out_dir), on_result, rank=rank, world=world)


def wait_for_row(rows_dir: Path, name: str, fingerprint: str, owner: int, patience_s: float) -> tuple[dict, np.ndarray]:
    """A row another worker makes, once its files are whole (they are written atomically, record last)."""
    deadline = time.monotonic() + patience_s
    while (found := load_row(rows_dir, name, fingerprint)) is None:
        if time.monotonic() > deadline:
            raise StageError(f"evaluate: row {name} was not finished by worker rank {owner} within "
                             "evaluate.wait_for_ranks_s; finished rows are kept, re-run to continue")
        time.sleep(ROW_POLL_S)
    return found


def evaluate_students(cfg: DCMConfig, students: dict[str, Path], out: Path,
                      on_result: Callable[[str, dict], None] | None = None, resume: bool = True,
                      rank: int = 0, world: int = 1) -> dict | None:
    """Teacher vs each student folder (name → DCMPipeline folder) on the same prompts and noise. Callers
    check the vbench weights first (check_weights), before anything slow. With `resume`, rows a killed
    run finished (same inputs, code and device) are reused from out/rows. With `world` workers, row i is
    made by worker i mod world (the teacher's, row 0, by rank 0, and every worker waits for it: fidelity
    compares with it); each worker makes all its rows, then rank 0 collects the others' from out/rows and
    writes the report, the others return None. Workers share out/rows (one filesystem) and must have the
    same GPU model (the device is part of a row's inputs); their latencies are timed side by side."""
    if world > 1 and not resume:
        raise ValueError("several evaluation workers share their rows through out/rows: resume must be on")
    ev, sampling = cfg.evaluate, cfg.teacher.sampling
    device = resolve_device(ev.device)
    device_name = str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)
    prompts = evaluation_prompts(cfg)
    real = real_clips(cfg.shard.dir, ev.prompts)  # held-out footage: the distribution mmd_vs_real compares with
    captions, seeds = [p["caption"] for p in prompts], [p["seed"] for p in prompts]
    rows_dir = out / ROWS_DIR
    inputs = {"prompts": prompts, "real": sha256_file(shard_manifest(cfg)), "device": device_name, "seed": cfg.seed,
              "data": config_to_dict(cfg.data),
              "schedule": config_to_dict(cfg.schedule), "judge": config_to_dict(cfg.judge),
              "sampling": config_to_dict(sampling), "negative": cfg.teacher.negative_prompt,
              "evaluate": {k: v for k, v in config_to_dict(ev).items()
                           if k not in ("out_dir", "student_steps", "grid_prompts", "wait_for_ranks_s",
                                        "pcm_reference_sampler")}}

    student_rows = []  # (index, row's model name, steps, folder hash, pipeline loader, step placement)
    for name, folder in students.items():
        model_hash = folder_hash(folder)
        pipe = functools.cache(lambda folder=folder: DCMPipeline.from_pretrained(folder, device, detail_weights="merged"))
        placements = {name: None}  # None: the student's own (its segment edges)
        info = folder / INFO  # absent: not a student folder, which loading it says clearly
        if ev.pcm_reference_sampler and info.is_file() and json.loads(info.read_text())["method"] == "pcm":
            placements[f"{name}{REFERENCE_PLACEMENT}"] = reference_pcm_sigmas
        for row_name, placement in placements.items():
            for steps in ev.student_steps:
                student_rows.append((1 + len(student_rows), row_name, steps, model_hash, pipe, placement))

    bar = progress(1 + len(student_rows), "evaluate", "row")

    def measured(index: int, name: str, model_hash: str, load: Callable[[], object], make: Callable[[], torch.Tensor],
                 reference: np.ndarray | None, collect: bool) -> tuple[dict, np.ndarray] | None:
        """Row `index` (worker index mod world makes it): made or reused when it is this worker's, else
        awaited from its owner when `collect`, else None."""
        fingerprint = row_fingerprint(**inputs, row=name, model=model_hash)
        owner = index % world
        if owner != rank:
            return wait_for_row(rows_dir, name, fingerprint, owner, ev.wait_for_ranks_s) if collect else None
        cached = load_row(rows_dir, name, fingerprint) if resume else None
        if cached is not None:
            print(f"evaluate: {name} reused from {rows_dir} (finished by an earlier run with the same inputs)")
            return cached
        bar.update()
        bar.set_postfix_str(name)
        load()  # loading the model is not part of its latency
        video, latency = _timed(make, ev.latency_repeats, len(prompts))
        clips = video_to_clips(video)
        row = {**score(cfg, clips, prompts, reference, real, name, device, out), "latency_s": latency}
        save_row(rows_dir, name, fingerprint, row, clips)
        return row, clips

    teacher = functools.cache(lambda: load_teacher(cfg, device))  # loaded only if a row needs it

    def teacher_clips() -> torch.Tensor:
        return generate(teacher(), captions, seeds, cfg.data.frames, cfg.data.height, cfg.data.width,
                        sampling_sigmas(cfg.schedule, sampling.steps), sampling.guidance_scale,
                        cfg.teacher.negative_prompt, ev.batch_size)

    # Row 0, the teacher's, first and awaited by every worker: fidelity compares each student with it.
    teacher_row, reference = measured(0, f"teacher_{sampling.steps}", teacher_content_hash(cfg), teacher,
                                      teacher_clips, None, collect=True)
    rows = [{"model": "teacher", "steps": sampling.steps, **teacher_row, "speedup": 1.0}]
    samples = {f"teacher {sampling.steps}": reference}
    def student_row(index, name, steps, model_hash, pipe, placement, collect):
        def student_clips() -> torch.Tensor:
            sigmas = None if placement is None else placement(pipe().schedule, steps)[:-1].tolist()
            return pipe().videos(captions, seeds, steps, cfg.data.frames, cfg.data.height, cfg.data.width,
                                 ev.batch_size, sigmas)
        return measured(index, f"{name}_{steps}", model_hash, pipe, student_clips, reference, collect)

    # Every worker makes its own rows first; then rank 0 collects the others' from out/rows.
    made = {entry[0]: student_row(*entry, collect=False) for entry in student_rows}
    for index, name, steps, model_hash, pipe, placement in student_rows if rank == 0 else []:
        measured_row, clips = made[index] or student_row(index, name, steps, model_hash, pipe, placement, collect=True)
        row = {"model": name, "steps": steps, **measured_row,
               "speedup": teacher_row["latency_s"] / measured_row["latency_s"]}
        rows.append(row)
        samples[f"{name} {steps}"] = clips
        if on_result:
            on_result(f"{name}_{steps}", row)
    bar.close()
    if rank != 0:
        return None
    out.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temporaries(rows_dir)  # a row write a kill interrupted
    metrics = {f"{row['model']}_{row['steps']}": {k: v for k, v in row.items() if k not in ("model", "steps")}
               for row in rows}
    metrics["device"] = device_name
    metrics["prompts"] = len(prompts)
    # Scores from random stand-in weights (dcm/eval/vbench_weights.py) test the wiring and mean nothing.
    stand_ins = stand_in_dimensions(ev.vbench.dimensions)
    metrics["vbench"] = {"dimensions": list(ev.vbench.dimensions), "meaningless_stand_in_weights": stand_ins}
    write_json_atomic(out / METRICS, metrics)
    notes = [f"**vbench_{d} is meaningless here**: computed from random stand-in weights." for d in stand_ins]
    primary = getattr(cfg.registry.gates, cfg.data.source).primary.metric.split(".", 1)[1]
    files = write_report(rows, samples, captions[: ev.grid_prompts], out, metrics["device"], primary, notes)
    return {"metrics": metrics, "rows": rows, "files": files, "prompts": prompts}
