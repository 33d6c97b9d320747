"""Stage `teacher`: pretrain the toy teacher by flow matching, or validate a real teacher's folder.

Either way the stage ends with `manifest.json` naming the teacher folder, its family and content
hash, so every later stage loads the teacher the same way. The toy teacher is then judged on held-out
prompts with the reference sampler (teacher.sampling): the number later distillation must match.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dcm.config import DCMConfig, config_to_dict
from dcm.data.sharding import MANIFEST as SHARD_MANIFEST
from dcm.data.stream import SampleStream
from dcm.data.tensors import clips_to_video, video_to_clips
from dcm.errors import StageError, StoppedEarly
from dcm.eval.judge import judge_many
from dcm.eval.prompts import heldout_prompts
from dcm.io import read_json, sha256_file, write_json_atomic
from dcm.models.family import folder_hash, validate_folder
from dcm.models.registry import family_class
from dcm.models.toy import ToyFamily
from dcm.sampling import generate
from dcm.schedule import add_noise, sample_training_sigmas, sampling_sigmas
from dcm.train.distributed import local_slice, rank_and_world
from dcm.train.loop import device_generator, resolve_device, train, training_fingerprint

MANIFEST, METRICS, MODEL = "manifest.json", "metrics.json", "model"


class FlowMatchingPretraining:
    """Loss: ‖v_θ(x_s, s, c) − (eps − x0)‖² with logit-normal shifted s and caption dropout."""

    def __init__(self, teacher: ToyFamily, cfg: DCMConfig):
        self.teacher, self.cfg, self.module = teacher, cfg, teacher.transformer

    def loss(self, batch: list[dict], generator: torch.Generator):
        """Draws for the whole batch, computed on this process's slice (all of it without torchrun)."""
        toy, device, part = self.cfg.teacher.toy, next(self.module.parameters()).device, local_slice(len(batch))
        drop = (torch.rand(len(batch), generator=generator) < toy.caption_dropout).tolist()
        captions = [self.cfg.teacher.negative_prompt if d else s["caption"] for s, d in zip(batch, drop)][part]
        latents = self.teacher.encode_video(clips_to_video(np.stack([s["clip"] for s in batch[part]])).to(device))
        noise = torch.randn((len(batch), *latents.shape[1:]), generator=device_generator(generator, device),
                            device=device)[part]
        sigma = sample_training_sigmas(len(batch), self.cfg.schedule, generator, toy.logit_mean, toy.logit_std)
        sigma = sigma[part].float().to(device)
        prediction = self.teacher.velocity(add_noise(latents, noise, sigma), sigma,
                                           self.teacher.encode_prompts(captions))
        return F.mse_loss(prediction.float(), (noise - latents).float()), {}


def load_teacher(cfg: DCMConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The teacher the `teacher` stage recorded (toy: the trained folder; real: teacher.path)."""
    folder = Path(cfg.teacher.out_dir) / MODEL if cfg.teacher.family == "toy" else Path(cfg.teacher.path)
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
    path = Path(cfg.teacher.out_dir) / MANIFEST
    if not path.is_file():
        raise StageError(f"{path} not found: run the teacher stage first (dvc repro teacher)")
    return read_json(path)["content_hash"]


def judge_teacher(teacher, cfg: DCMConfig, steps: int | None = None) -> tuple[dict, np.ndarray, list[dict]]:
    """Generate the held-out prompts with the reference sampler and judge them."""
    sampling = cfg.teacher.sampling
    prompts = heldout_prompts(cfg.shard.dir, sampling.eval_prompts)
    videos = generate(teacher, [p["caption"] for p in prompts], [p["seed"] for p in prompts], cfg.data.frames,
                      cfg.data.height, cfg.data.width, sampling_sigmas(cfg.schedule, steps or sampling.steps),
                      sampling.guidance_scale, cfg.teacher.negative_prompt, sampling.batch_size)
    clips = video_to_clips(videos)
    return judge_many(clips, prompts, cfg.data, cfg.judge), clips, prompts


def _record_real_teacher(cfg: DCMConfig, out: Path) -> dict:
    family = family_class(cfg.teacher.family)
    folder = Path(cfg.teacher.path).resolve()
    validate_folder(folder, family.components)
    manifest = {"family": family.name, "path": str(folder), "content_hash": folder_hash(folder)}
    (out / MODEL).mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MODEL / "SOURCE.json", manifest)
    write_json_atomic(out / METRICS, {})
    write_json_atomic(out / MANIFEST, manifest)
    return {"manifest": manifest, "metrics": {}, "clips": None, "prompts": []}


def run_teacher_stage(cfg: DCMConfig, on_log: Callable[[int, dict], None] | None = None,
                      stop_after: int | None = None) -> dict:
    out = Path(cfg.teacher.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.teacher.family != "toy":
        return _record_real_teacher(cfg, out)
    train_cfg = cfg.teacher.toy.train
    device = resolve_device(train_cfg.device)
    teacher = ToyFamily.build(cfg, cfg.seed)
    teacher.transformer.to(device)
    stream = SampleStream(cfg.shard.dir, "train", train_cfg.shuffle_buffer, cfg.seed)
    toy = {k: v for k, v in config_to_dict(cfg.teacher.toy).items() if k != "train"}
    fingerprint = training_fingerprint(train_cfg, toy=toy, schedule=config_to_dict(cfg.schedule), seed=cfg.seed,
                                       negative_prompt=cfg.teacher.negative_prompt,
                                       shards=sha256_file(Path(cfg.shard.dir) / SHARD_MANIFEST))
    result = train(FlowMatchingPretraining(teacher, cfg), stream, train_cfg, Path(cfg.teacher.checkpoint_dir),
                   cfg.seed, on_log=on_log, stop_after=stop_after, time_limit_s=train_cfg.time_limit_s,
                   fingerprint=fingerprint)
    if result.stopped_early:
        raise StoppedEarly(f"teacher training stopped at step {result.steps} of {train_cfg.steps} (time limit or stop "
                         f"request); its checkpoint is in {cfg.teacher.checkpoint_dir}: run the stage again to continue")
    if rank_and_world()[0] != 0:  # data parallel: every rank holds the same weights; rank 0 exports them
        return {"losses": result.losses, "resumed_from": result.resumed_from}
    tmp = out / f".tmp-{MODEL}"
    shutil.rmtree(tmp, ignore_errors=True)
    teacher.save_pretrained(tmp, transformer=result.ema or teacher.transformer)  # ship the EMA weights
    shutil.rmtree(out / MODEL, ignore_errors=True)
    tmp.rename(out / MODEL)
    reloaded = load_teacher(cfg, device)  # judge what later stages will load, not the object in memory
    scores, clips, prompts = judge_teacher(reloaded, cfg)
    tail = result.losses[-train_cfg.log_every:]
    metrics = {"final_loss": float(np.mean(tail)), **{f"judge_{k}": v for k, v in scores.items()}}
    # What the model is, not how the run went: a resumed run writes the same bytes as an uninterrupted one.
    manifest = {"family": "toy", "path": MODEL, "content_hash": folder_hash(out / MODEL), "steps": result.steps,
                "metrics": metrics,
                "sampling": cfg.teacher.sampling.model_dump(), "eval_prompts": len(prompts)}
    write_json_atomic(out / METRICS, metrics)
    write_json_atomic(out / MANIFEST, manifest)
    return {"manifest": manifest, "metrics": metrics, "clips": clips, "prompts": prompts, "losses": result.losses,
            "resumed_from": result.resumed_from}
