"""Stages `distill_semantic`, `distill_detail` and `distill_baselines` (LCM, PCM, single expert): build the
student, train it with the shared loop, export it as a DCMPipeline folder and judge it on held-out prompts.

Outputs: `<distill.out_dir>/<name>/` (the pipeline folder; name = semantic | dcm) and `<name>.json`
(metrics); the baselines under `<distill.out_dir>/baselines/` (one DVC output, whichever are listed).
Checkpoints: `<distill.checkpoint_dir>/<method>/`, the baselines' under `<distill.checkpoint_dir>/baselines/`.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from dcm.config import DCMConfig, TrainConfig, config_to_dict
from dcm.data.latents import decode_precomputed, has_trajectory
from dcm.data.stream import SampleStream
from dcm.data.tensors import video_to_clips
from dcm.errors import StageError, StoppedEarly
from dcm.eval.judge import judge_many
from dcm.eval.prompts import has_ground_truth, heldout_prompts
from dcm.io import read_json, sha256_file, write_json_atomic
from dcm.models.dual_expert import Student
from dcm.models.family import folder_hash
from dcm.model_card import write_model_card
from dcm.pipeline import DCMPipeline
from dcm.schedule import expert_threshold, method_edges, segment_edges
from dcm.stages.paths import (BASELINES, BASELINES_INDEX, EMPTY_PROMPT, MANIFEST, OUTPUT_NAMES, TEACHER_MODEL,
                              baselines_folder, checkpoint_folder, latents_manifest, output_folder,
                              student_metrics_file, teacher_model_dir)
from dcm.stages.spec import CHECKPOINTS_NOTE, Output, StageSpec
from dcm.stages.teacher import load_teacher, teacher_content_hash
from dcm.stock_export import stock_placement
from dcm.train.consistency import ConsistencyDistillation
from dcm.train.distributed import rank_and_world
from dcm.train.sharding import data_parallel, full_state_dict
from dcm.train.loop import resolve_device, train, training_fingerprint

# The distill settings each method trains with, and no others: its checkpoint fingerprint (method_settings)
# and its stage's DVC params are this one table, so a change to the detail stage's GAN leaves the semantic
# expert up to date (and lets experiments share one semantic expert).
SHARED_SETTINGS = ("teacher_mode", "guidance_scale", "loss", "huber_c", "target_ema_decay")
TRAINING_SETTINGS = {
    "semantic": ("kappa", *SHARED_SETTINGS, "tc_weight", "tc_stride", "semantic_weights", "lora"),
    "detail": ("kappa", "detail_phases", *SHARED_SETTINGS, "detail_expert", "adversarial", "adv_weight",
               "generator_weight", "fm_weight", "lora", "discriminator"),
    "lcm": SHARED_SETTINGS,
    "pcm": ("pcm_phases", *SHARED_SETTINGS),
    "single": ("kappa", "detail_phases", *SHARED_SETTINGS),
}
TRAIN_SECTIONS = {"semantic": "semantic", "detail": "detail", **{name: "baseline" for name in BASELINES}}
# Read by every method besides its settings: the students' seed and schedule (training), and what the
# exported student's samples and judge read (reporting).
COMMON_PARAMS = ("seed", "distill.seed", "schedule", "teacher.max_text_tokens", "data", "judge",
                 "distill.sample_every", "distill.sample_prompts", "distill.sample_steps")
STUDENT_INPUTS = ("${precompute.dir}", f"${{teacher.out_dir}}/{TEACHER_MODEL}", f"${{teacher.out_dir}}/{MANIFEST}")


def stage_params(methods: tuple[str, ...], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    settings = [f"distill.{key}" for method in methods for key in TRAINING_SETTINGS[method]]
    sections = [f"distill.{TRAIN_SECTIONS[method]}" for method in methods]
    return tuple(dict.fromkeys([*COMMON_PARAMS, *settings, *sections, *extra]))


def _student_stage(name: str, methods: tuple[str, ...], folder: str, deps: tuple[str, ...] = (),
                   extra: tuple[str, ...] = (), metrics: bool = True, note: str = "") -> StageSpec:
    return StageSpec(
        name=name, command=f"dcm distill {name.removeprefix('distill_')}", flow="dcm.ops.flows.distill",
        params=stage_params(methods, extra), deps=STUDENT_INPUTS + deps, note="; ".join(filter(None, (note, CHECKPOINTS_NOTE))),
        outs=(Output(f"${{distill.out_dir}}/{folder}"),),
        metrics=(Output(f"${{distill.out_dir}}/{folder}.json", cache=False),) if metrics else ())


SPECS = (
    _student_stage("distill_semantic", ("semantic",), OUTPUT_NAMES["semantic"]),
    _student_stage("distill_detail", ("detail",), OUTPUT_NAMES["detail"],
                   deps=(f"${{distill.out_dir}}/{OUTPUT_NAMES['semantic']}",)),
    _student_stage("distill_baselines", BASELINES, "baselines", extra=("distill.baselines",), metrics=False,
                   note="LCM, PCM and the single-expert rung, whichever distill.baselines lists (none by default)"),
)


def train_config(cfg: DCMConfig, method: str) -> TrainConfig:
    return getattr(cfg.distill, TRAIN_SECTIONS[method])


def training_seed(cfg: DCMConfig) -> int:
    return cfg.seed if cfg.distill.seed is None else cfg.distill.seed


def finish_baselines(cfg: DCMConfig) -> Path:
    """After `dcm distill baselines`: the folder holds exactly the listed baselines, plus an index that says
    which (so the stage's output exists, and is honest, when the list is empty)."""
    folder = baselines_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    for name in BASELINES:
        if name not in cfg.distill.baselines:  # trained under an earlier list: not this configuration's
            shutil.rmtree(folder / name, ignore_errors=True)
            (folder / f"{name}.json").unlink(missing_ok=True)
    missing = [name for name in cfg.distill.baselines if not (folder / name).is_dir()]
    if missing:
        raise StageError(f"baselines {missing} are listed in distill.baselines but not in {folder}: run "
                         "`dcm distill baselines`")
    write_json_atomic(folder / BASELINES_INDEX, {"baselines": list(cfg.distill.baselines)})
    return folder


def build_student(cfg: DCMConfig, method: str, teacher, device: torch.device) -> Student:
    """semantic/lcm/pcm/single: a copy of the teacher; detail: the exported semantic expert, frozen, plus the
    detail expert (LoRA + copied layers, or a full copy)."""
    distill = cfg.distill
    guidance = distill.guidance_scale if teacher.guidance == "embedded" else None
    if method != "detail":
        student = Student(teacher, copy.deepcopy(teacher.transformer), guidance=guidance)
        if method == "semantic" and distill.semantic_weights == "lora":
            student.add_semantic_lora(distill.lora)
            student.train_only("semantic_lora")
        else:
            student.train_only("semantic")
        return student.to(device)
    semantic = output_folder(cfg, OUTPUT_NAMES["semantic"]) / "transformer"
    if not semantic.is_dir():
        raise StageError(f"{semantic} not found: the detail stage starts from the semantic expert; run "
                         "distill_semantic first (dvc repro distill_semantic)")
    transformer = type(teacher.transformer).from_pretrained(semantic, use_safetensors=True, torch_dtype=torch.float32)
    student = Student(teacher, transformer, guidance=guidance)
    student.add_detail_expert(distill.detail_expert, teacher.detail_modules, distill.lora,
                              expert_threshold(cfg.schedule, distill.kappa))
    student.train_only("detail")
    return student.to(device)


def method_settings(cfg: DCMConfig, method: str) -> dict:
    """The distill settings that shape `method`'s training (TRAINING_SETTINGS); the LoRA settings only where a
    LoRA is trained."""
    distill = config_to_dict(cfg.distill)
    lora_used = (method == "detail" and cfg.distill.detail_expert == "lora"
                 or method == "semantic" and cfg.distill.semantic_weights == "lora")
    return {key: distill[key] for key in TRAINING_SETTINGS[method] if key != "lora" or lora_used}


def distill_fingerprint(cfg: DCMConfig, method: str, train_cfg: TrainConfig) -> str:
    """Checkpoints resume only under the same method settings, teacher, latents (and semantic expert)."""
    inputs = {"method": method, "distill": method_settings(cfg, method), "schedule": config_to_dict(cfg.schedule),
              "seed": training_seed(cfg), "teacher": teacher_content_hash(cfg),
              "latents": sha256_file(latents_manifest(cfg))}
    if method == "detail":
        inputs["semantic"] = folder_hash(output_folder(cfg, OUTPUT_NAMES["semantic"]) / "transformer")
    return training_fingerprint(train_cfg, **inputs)


def pipeline_info(cfg: DCMConfig, method: str, teacher, student: Student, steps: int) -> dict:
    name = OUTPUT_NAMES[method]
    # The semantic stage's own samples know no detail phases: its output must not depend on them.
    edges = (segment_edges("dcm", cfg.schedule, cfg.distill.kappa, cfg.distill.pcm_phases) if method == "semantic"
             else method_edges("dcm" if method == "detail" else method, cfg.schedule, cfg.distill))
    return {"family": teacher.name, "method": name, "kappa": cfg.distill.kappa, "edges": edges,
            "threshold": student.threshold, "guidance": student.guidance, "detail": student.detail_kind,
            "schedule": config_to_dict(cfg.schedule), "max_text_tokens": teacher.max_text_tokens,
            "defaults": {"frames": cfg.data.frames, "height": cfg.data.height, "width": cfg.data.width},
            "teacher_hash": teacher_content_hash(cfg), "train_steps": steps, "sample_steps": cfg.distill.sample_steps}


def sample_and_judge(cfg: DCMConfig, pipe: DCMPipeline, steps: int) -> tuple[dict, np.ndarray, list[dict]]:
    """The held-out prompts, each from its own seeded noise (the teacher's for the same prompt)."""
    prompts = heldout_prompts(cfg.shard.dir, cfg.distill.sample_prompts)
    was_training = pipe.student.training
    pipe.student.eval()
    video = pipe.videos([p["caption"] for p in prompts], [p["seed"] for p in prompts], steps, cfg.data.frames,
                        cfg.data.height, cfg.data.width, len(prompts))
    pipe.student.train(was_training)
    clips = video_to_clips(video)
    scores = judge_many(clips, prompts, cfg.data, cfg.judge) if has_ground_truth(prompts) else {}
    return scores, clips, prompts


def _precompute_manifest(cfg: DCMConfig) -> dict:
    path = latents_manifest(cfg)
    if not path.is_file():
        raise StageError(f"{path} not found: distillation reads the precompute stage's output; run it first "
                         "(dvc repro precompute)")
    manifest = read_json(path)
    if manifest["teacher_hash"] != teacher_content_hash(cfg):
        raise StageError(f"{cfg.precompute.dir} was computed with another teacher; re-run the precompute stage")
    if (cfg.distill.teacher_mode == "trajectory"
            and abs(manifest["guidance_scale"] - cfg.distill.guidance_scale) > 1e-9):
        raise StageError(f"teacher_mode=trajectory reads solves made with CFG {manifest['guidance_scale']}, but "
                         f"distill.guidance_scale is {cfg.distill.guidance_scale}: make them equal or use "
                         "teacher_mode: online")
    return manifest


def discriminator_report(objective: ConsistencyDistillation, cfg: DCMConfig) -> dict:
    """The detail stage's discriminator at the end of training: its real-vs-fake accuracy over the last
    logging window, and whether that is chance (then its GAN term taught the generator nothing)."""
    accuracy = objective.adversarial.accuracy() if objective.adversarial is not None else None
    if accuracy is None:
        return {}
    disc = cfg.distill.discriminator
    at_chance = accuracy <= disc.chance_accuracy
    if at_chance:
        print(f"warning: the discriminator stayed at chance (real-vs-fake accuracy {accuracy:.3f} over the last "
              f"{len(objective.adversarial.recent_health)} steps, at most distill.discriminator.chance_accuracy "
              f"{disc.chance_accuracy}): the GAN term pushed the detail expert along an untrained critic. Raise "
              "distill.detail.steps, distill.discriminator.lr or updates_per_step (with real: data; the target "
              "as real stays at chance), or set distill.adversarial: none")
    return {"discriminator_accuracy": accuracy, "discriminator_at_chance": float(at_chance)}


def run_distill_stage(cfg: DCMConfig, method: str, on_log: Callable[[int, dict], None] | None = None,
                      on_samples: Callable[[int, np.ndarray, list[dict]], None] | None = None,
                      stop_after: int | None = None) -> dict:
    if method not in OUTPUT_NAMES:
        raise ValueError(f"method must be one of {sorted(OUTPUT_NAMES)}, got {method!r}")
    train_cfg, distill = train_config(cfg, method), cfg.distill
    manifest = _precompute_manifest(cfg)
    device = resolve_device(train_cfg.device)
    teacher = load_teacher(cfg, device)
    teacher.transformer.requires_grad_(False).eval()
    uncond = {k: v[None].to(device) for k, v in load_file(Path(cfg.precompute.dir) / EMPTY_PROMPT).items()}
    seed = training_seed(cfg)
    with torch.random.fork_rng(devices=[]):  # LoRA and discriminator initialisation: seeded, reproducible
        torch.manual_seed(seed)
        student = build_student(cfg, method, teacher, device)
        objective = ConsistencyDistillation(student, teacher, cfg, method, uncond, manifest["trajectory_nodes"])
    keep = has_trajectory if distill.teacher_mode == "trajectory" else None
    stream = SampleStream(cfg.precompute.dir, "train", train_cfg.shuffle_buffer, seed, decode=decode_precomputed,
                          keep=keep)

    def log(step: int, metrics: dict) -> None:
        if on_log:
            on_log(step, metrics)
        # A sharded student samples on every process (each forward gathers its weights); rank 0 reports.
        if (on_samples or data_parallel()) and distill.sample_every and step % distill.sample_every == 0:
            pipe = DCMPipeline(teacher, student, pipeline_info(cfg, method, teacher, student, step))
            with torch.no_grad():
                _, clips, prompts = sample_and_judge(cfg, pipe, distill.sample_steps)
            if on_samples:
                on_samples(step, clips, prompts)

    checkpoints = checkpoint_folder(cfg, method)
    result = train(objective, stream, train_cfg, checkpoints, seed, on_log=log,
                   stop_after=stop_after, time_limit_s=train_cfg.time_limit_s,
                   fingerprint=distill_fingerprint(cfg, method, train_cfg))
    if result.stopped_early:
        raise StoppedEarly(f"{method} distillation stopped at step {result.steps} of {train_cfg.steps} (time limit or "
                         f"stop request); its checkpoint is in {checkpoints}: run the stage "
                         "again to continue")
    final = result.ema or student
    if data_parallel():  # sharded over the processes: rank 0 gathers them into a plain student and exports it
        weights = full_state_dict(final)
        if rank_and_world()[0] != 0:
            return {"losses": result.losses, "steps": result.steps, "resumed_from": result.resumed_from}
        teacher = load_teacher(cfg, device)
        final = build_student(cfg, method, teacher, device)
        final.load_state_dict(weights)
    if method == "semantic" and distill.semantic_weights == "lora":
        final.merge_semantic_lora()
    name = OUTPUT_NAMES[method]
    out = output_folder(cfg, name)
    tmp = out.with_name(f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    DCMPipeline(teacher, final, pipeline_info(cfg, method, teacher, final, result.steps)).save_pretrained(
        tmp, teacher_model_dir(cfg))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    reloaded = DCMPipeline.from_pretrained(out, device)  # judge what users will load
    with torch.no_grad():
        scores, clips, prompts = sample_and_judge(cfg, reloaded, distill.sample_steps)
    tail = result.losses[-train_cfg.log_every:]
    metrics = {"final_loss": float(np.mean(tail)), **{f"judge_{k}": v for k, v in scores.items()},
               **discriminator_report(objective, cfg)}
    write_model_card(out, reloaded.info, {f"{k}_{distill.sample_steps}_steps": v for k, v in metrics.items()},
                     f"the distill stage, {len(prompts)} held-out prompts", stock_placement(out))
    write_json_atomic(student_metrics_file(cfg, name), {"method": name, "steps": result.steps,
                                                     "sample_steps": distill.sample_steps, **metrics})
    return {"folder": str(out), "metrics": metrics, "clips": clips, "prompts": prompts, "losses": result.losses,
            "steps": result.steps, "resumed_from": result.resumed_from}
