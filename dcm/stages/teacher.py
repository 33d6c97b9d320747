"""Stage `teacher`: pretrain the toy teacher by flow matching, or validate a real teacher's folder.

Either way the stage ends with `manifest.json` naming the teacher folder, its family and content
hash, so every later stage loads the teacher the same way. The toy teacher then samples held-out
prompts with the reference sampler (teacher.sampling) and is scored (dcm/eval/scores.py: judged where the
prompts carry shapes ground truth): the numbers later distillation must match. Its loss curve and a grid of
real vs teacher clips for the same prompts land beside the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dcm.config import ConfigError, DCMConfig
from dcm.data.stream import SampleStream
from dcm.data.tensors import video_to_clips
from dcm.errors import StageError, StoppedEarly
from dcm.eval.prompts import heldout_samples
from dcm.eval.report import write_grid, write_loss_curve
from dcm.eval.scores import clip_scores
from dcm.io import read_json, sha256_file, write_json_atomic
from dcm.models.family import folder_hash, validate_folder
from dcm.models.packed import check_finished, unpack_verified
from dcm.models.registry import family_class
from dcm.models.toy import ToyFamily
from dcm.sampling import generate
from dcm.schedule import sampling_sigmas
from dcm.stages.checks import check_geometry, pixel_patch
from dcm.stages.paths import MANIFEST, METRICS, TEACHER_MODEL, shard_manifest, teacher_manifest, teacher_model_dir
from dcm.stages.spec import CHECKPOINTS_NOTE, Output, StageSpec, param_values
from dcm.train.distributed import rank_and_world
from dcm.train.sharding import data_parallel, full_state_dict
from dcm.train.flow_matching import FlowMatchingPretraining
from dcm.train.loop import resolve_device, train, training_fingerprint

# What the toy teacher's weights depend on (its checkpoint fingerprint; teacher.toy.train's run-only keys
# drop out there), then what only the exported folder's judgement and a real teacher's record read.
TRAINING_PARAMS = ("seed", "schedule", "teacher.negative_prompt", "teacher.toy")
REPORTING_PARAMS = ("data", "judge", "teacher.sampling", "teacher.family", "teacher.path", "teacher.max_text_tokens")
# Pictures for people (and the MLflow run), not DVC outputs: a real teacher has no loss curve and
# teacher.sampling.eval_prompts: 0 draws no grid.
LOSS_CURVE, SAMPLE_GRID = "loss.png", "samples.png"
# In teacher.checkpoint_dir, written when training stops early: the EMA weights so far (a teacher folder) and how
# far they got, so that another machine can continue by fine-tuning from them (checkpoints stay where they ran).
PARTIAL, PARTIAL_PROGRESS = "partial", "progress.json"

SPEC = StageSpec(
    name="teacher", command="dcm teacher", flow="dcm.ops.flows.teacher",
    params=TRAINING_PARAMS + REPORTING_PARAMS, deps=("${shard.dir}", "${teacher.toy.pretrained}"),
    outs=(Output(f"${{teacher.out_dir}}/{TEACHER_MODEL}"), Output(f"${{teacher.out_dir}}/{MANIFEST}")),
    note=CHECKPOINTS_NOTE,
    metrics=(Output(f"${{teacher.out_dir}}/{METRICS}", cache=False),))


def toy_fingerprint(cfg: DCMConfig, start: str | None = None) -> str:
    """What a toy-teacher checkpoint must match to be resumed: TRAINING_PARAMS, the shards, and for a finetune
    the content hash of the teacher it started from (`start`)."""
    values = param_values(cfg, TRAINING_PARAMS)
    values["teacher.toy"] = {k: v for k, v in values["teacher.toy"].items() if k != "train"}  # run-only keys out
    if start is not None:
        values["finetuned_from"] = start
    return training_fingerprint(cfg.teacher.toy.train, params=values, shards=sha256_file(shard_manifest(cfg)))


def load_teacher(cfg: DCMConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The teacher the `teacher` stage recorded (toy: the trained folder; real: teacher.path)."""
    folder = teacher_model_dir(cfg)
    if cfg.teacher.family == "toy" and not folder.is_dir():
        raise StageError(f"{folder} not found: run the teacher stage first (dvc repro teacher)")
    try:
        return family_class(cfg.teacher.family).load(folder, cfg.teacher.max_text_tokens, device, dtype)
    except OSError as error:  # diffusers/transformers: a missing or unreadable weights file
        raise StageError(f"cannot load the {cfg.teacher.family} teacher from {folder}: {error}. dcm reads weights "
                         "from .safetensors only, never pickled .bin/.pt files: convert them first (load with "
                         "weights_only=True in a sandbox and save_pretrained(..., safe_serialization=True))") from None


def teacher_content_hash(cfg: DCMConfig) -> str:
    """The content hash the teacher stage recorded: what downstream fingerprints depend on."""
    path = teacher_manifest(cfg)
    if not path.is_file():
        raise StageError(f"{path} not found: run the teacher stage first (dvc repro teacher)")
    return read_json(path)["content_hash"]


def score_teacher(teacher, cfg: DCMConfig, steps: int | None = None) -> dict:
    """Generate teacher.sampling.eval_prompts held-out prompts with the reference sampler and score them
    (clip_scores: the judge only where the prompts carry shapes ground truth). Returns metrics, clips,
    prompts and the real clips of the same prompts; nothing when eval_prompts is 0."""
    sampling = cfg.teacher.sampling
    if not sampling.eval_prompts:
        return {"metrics": {}, "clips": None, "prompts": [], "real": None}
    prompts, real = heldout_samples(cfg.shard.dir, sampling.eval_prompts)
    videos = generate(teacher, [p["caption"] for p in prompts], [p["seed"] for p in prompts], cfg.data.frames,
                      cfg.data.height, cfg.data.width, sampling_sigmas(cfg.schedule, steps or sampling.steps),
                      sampling.guidance_scale, cfg.teacher.negative_prompt, sampling.batch_size)
    clips = video_to_clips(videos)
    return {"metrics": clip_scores(clips, prompts, real, cfg.data, cfg.judge, pixel_patch(cfg)), "clips": clips,
            "prompts": prompts, "real": real}


def _record_real_teacher(cfg: DCMConfig, out: Path) -> dict:
    family = family_class(cfg.teacher.family)
    folder = Path(cfg.teacher.path).resolve()
    validate_folder(folder, family.components)
    manifest = {"family": family.name, "path": str(folder), "content_hash": folder_hash(folder)}
    (out / TEACHER_MODEL).mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / TEACHER_MODEL / "SOURCE.json", manifest)
    write_json_atomic(out / METRICS, {})
    write_json_atomic(out / MANIFEST, manifest)
    return {"manifest": manifest, "metrics": {}, "clips": None, "prompts": []}


def architecture_mismatches(cfg: DCMConfig, folder: Path) -> list[str]:
    """Where a toy teacher folder differs from teacher.toy's model, text and prediction settings."""
    toy, found = cfg.teacher.toy, []
    transformer = read_json(folder / "transformer" / "config.json")
    for key, value in toy.model.model_dump().items():
        if transformer.get(key) != (list(value) if isinstance(value, tuple) else value):
            found.append(f"teacher.toy.model.{key}: {value} here, {transformer.get(key)} in the folder")
    text = read_json(folder / "text_encoder" / "config.json")
    found += [f"teacher.toy.text.{key}: {value} here, {text.get(key)} in the folder"
              for key, value in toy.text.model_dump().items() if text.get(key) != value]
    index = read_json(folder / "model_index.json")
    found += [f"teacher.toy.{key}: {getattr(toy, key)} here, {index.get(key)} in the folder"
              for key in ("prediction", "min_sigma") if index.get(key) != getattr(toy, key)]
    return found


def unpack_matching(cfg: DCMConfig, tmp: Path) -> dict:
    """teacher.toy.pretrained unpacked into `tmp` with its hash checked and its architecture compared with
    params.yaml (a mismatch removes it and says which keys differ); returns its record."""
    source = Path(cfg.teacher.toy.pretrained)
    shutil.rmtree(tmp, ignore_errors=True)
    record = unpack_verified(source, tmp)
    mismatches = architecture_mismatches(cfg, tmp)
    if mismatches:
        shutil.rmtree(tmp)
        raise ConfigError(f"the pretrained teacher {source} does not match params.yaml: " + "; ".join(mismatches) +
                          ". Set teacher.toy back to its architecture, or teacher.toy.init: scratch to train your own")
    return record


def start_from_pretrained(teacher: ToyFamily, cfg: DCMConfig, out: Path) -> str:
    """init: finetune: the packed teacher's transformer weights as the starting point; returns its hash."""
    tmp = out / f".tmp-finetune-source-{rank_and_world()[0]}"  # each worker unpacks its own copy
    record = unpack_matching(cfg, tmp)
    source = ToyFamily.load(tmp, cfg.teacher.max_text_tokens, "cpu", torch.float32)
    teacher.transformer.load_state_dict(source.transformer.state_dict())
    shutil.rmtree(tmp)
    return record["content_hash"]


def _install_pretrained(cfg: DCMConfig, out: Path) -> dict:
    """The packed teacher of teacher.toy.pretrained, unpacked, its hash and architecture checked, then scored
    like a freshly trained one; its record (how it was made, its own judgement) goes into the manifest."""
    source = Path(cfg.teacher.toy.pretrained)
    check_finished(source)
    tmp = out / f".tmp-{TEACHER_MODEL}"
    record = unpack_matching(cfg, tmp)
    shutil.rmtree(out / TEACHER_MODEL, ignore_errors=True)
    tmp.rename(out / TEACHER_MODEL)
    scored = score_teacher(load_teacher(cfg, resolve_device(cfg.teacher.toy.train.device)), cfg)
    metrics = {f"pretrained_{k}": v for k, v in record["metrics"].items()} | scored["metrics"]
    if scored["clips"] is not None:
        write_grid({"real": scored["real"], "teacher": scored["clips"]}, len(scored["prompts"]), out / SAMPLE_GRID)
    manifest = {"family": "toy", "path": TEACHER_MODEL, "content_hash": record["content_hash"], "steps": record["steps"],
                "metrics": metrics, "sampling": cfg.teacher.sampling.model_dump(), "eval_prompts": len(scored["prompts"]),
                "pretrained": {"folder": str(source), "device": record.get("device"),
                               "overrides": record.get("overrides"), "eval_prompts": record.get("eval_prompts")}}
    write_json_atomic(out / METRICS, metrics)
    write_json_atomic(out / MANIFEST, manifest)
    return {"manifest": manifest, "metrics": metrics, "clips": scored["clips"], "prompts": scored["prompts"]}


def _plain_teacher(cfg: DCMConfig, teacher: ToyFamily, weights: torch.nn.Module):
    """(teacher, transformer) whose save_pretrained writes `weights`; None on ranks other than 0. Data parallel:
    gathered from every process into a plain model first (collective: every rank calls it)."""
    if not data_parallel():
        return teacher, weights
    state = full_state_dict(weights)
    if rank_and_world()[0] != 0:
        return None
    plain = ToyFamily.build(cfg, cfg.seed)
    plain.transformer.load_state_dict(state)
    return plain, plain.transformer


def _save_folder(teacher: ToyFamily, transformer: torch.nn.Module, folder: Path) -> None:
    """The teacher as a diffusers folder at `folder`, replaced only once it is completely written."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    teacher.save_pretrained(tmp, transformer=transformer)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def run_teacher_stage(cfg: DCMConfig, on_log: Callable[[int, dict], None] | None = None,
                      stop_after: int | None = None) -> dict:
    check_geometry(cfg)
    out = Path(cfg.teacher.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.teacher.family != "toy":
        return _record_real_teacher(cfg, out)
    if cfg.teacher.toy.init == "pretrained":
        return _install_pretrained(cfg, out)
    train_cfg = cfg.teacher.toy.train
    device = resolve_device(train_cfg.device)
    teacher = ToyFamily.build(cfg, cfg.seed)
    # finetune: a checkpoint only resumes a run that started from the same packed teacher
    start = start_from_pretrained(teacher, cfg, out) if cfg.teacher.toy.init == "finetune" else None
    teacher.transformer.to(device)
    stream = SampleStream(cfg.shard.dir, "train", train_cfg.shuffle_buffer, cfg.seed)
    result = train(FlowMatchingPretraining(teacher, cfg), stream, train_cfg, Path(cfg.teacher.checkpoint_dir),
                   cfg.seed, on_log=on_log, stop_after=stop_after, time_limit_s=train_cfg.time_limit_s,
                   fingerprint=toy_fingerprint(cfg, start))
    partial = Path(cfg.teacher.checkpoint_dir) / PARTIAL
    exported = _plain_teacher(cfg, teacher, result.ema or teacher.transformer)  # ship the EMA weights
    if result.stopped_early:
        if exported is not None:
            _save_folder(*exported, partial / TEACHER_MODEL)
            write_json_atomic(partial / PARTIAL_PROGRESS, {
                "steps": result.steps, "of": train_cfg.steps,
                "finetuned_from": None if start is None else {"folder": cfg.teacher.toy.pretrained, "content_hash": start}})
        raise StoppedEarly(f"teacher training stopped at step {result.steps} of {train_cfg.steps} (time limit or stop "
                           f"request); its checkpoint is in {cfg.teacher.checkpoint_dir}: run the stage again to "
                           f"continue. {partial} holds its EMA weights so far, to continue on another machine "
                           "(research/run_stages.py --continue-teacher)")
    if exported is None:  # data parallel: rank 0 exports and judges the teacher
        return {"losses": result.losses, "resumed_from": result.resumed_from}
    shutil.rmtree(partial, ignore_errors=True)  # finished: weights of an earlier stop no longer continue anything
    _save_folder(*exported, out / TEACHER_MODEL)
    reloaded = load_teacher(cfg, device)  # score what later stages will load, not the object in memory
    scored = score_teacher(reloaded, cfg)
    tail = result.losses[-train_cfg.log_every:]
    metrics = {"final_loss": float(np.mean(tail)), **scored["metrics"]}
    write_loss_curve(result.losses, out / LOSS_CURVE, "teacher flow-matching loss")
    if scored["clips"] is not None:  # each held-out prompt: the real clip, then the teacher's
        write_grid({"real": scored["real"], "teacher": scored["clips"]}, len(scored["prompts"]), out / SAMPLE_GRID)
    # What the model is, not how the run went: a resumed run writes the same bytes as an uninterrupted one.
    manifest = {"family": "toy", "path": TEACHER_MODEL, "content_hash": folder_hash(out / TEACHER_MODEL),
                "steps": result.steps, "metrics": metrics, "sampling": cfg.teacher.sampling.model_dump(),
                "eval_prompts": len(scored["prompts"])}
    if start is not None:
        manifest["finetuned_from"] = {"folder": cfg.teacher.toy.pretrained, "content_hash": start}
    write_json_atomic(out / METRICS, metrics)
    write_json_atomic(out / MANIFEST, manifest)
    return {"manifest": manifest, "metrics": metrics, "clips": scored["clips"], "prompts": scored["prompts"],
            "losses": result.losses, "resumed_from": result.resumed_from}
