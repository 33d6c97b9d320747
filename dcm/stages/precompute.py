"""Stage `precompute`: VAE latents, text embeddings and (optionally) teacher ODE trajectories.

One output shard per input shard, written through the same resume machinery as the shard stage: a
killed run keeps every finished shard and redoes only the rest, producing the same bytes as an
uninterrupted run. Ranks (RANK/WORLD_SIZE, as torchrun sets them) take every world-th shard; rank 0
writes the manifest once all sidecars are in. Everything stored is safetensors or JSON.

Per sample: `tensors.safetensors` with `latents` (C, T, H, W), `text.<name>` (the family's prompt
embedding tensors), and for samples with a trajectory `trajectory` (K, C, T, H, W) — the teacher's
states at Euler nodes `trajectory_nodes` (K,), solved from seeded noise with CFG — plus
`trajectory_x0`, the solve's end point; `meta.json`; `caption.txt`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

from dcm.config import DCMConfig
from dcm.data.latents import non_finite
from dcm.data.reader import decode_sample, read_shard, verify_shard
from dcm.data.shardfiles import SPLITS, finished_sidecar, remove_stale, shard_paths, shard_writer
from dcm.data.tensors import clips_to_video
from dcm.errors import StageError
from dcm.io import atomic_path, read_json, sha256_file, sha256_json, write_json_atomic
from dcm.sampling import euler_sample, expand_uncond, seeded_noise
from dcm.schedule import sampling_sigmas
from dcm.progress import tracked
from dcm.stages.paths import EMPTY_PROMPT, MANIFEST, TEACHER_MODEL, shard_manifest
from dcm.stages.spec import Output, StageSpec, param_values
from dcm.stages.teacher import load_teacher, teacher_content_hash
from dcm.train.loop import resolve_device

PARAMS = ("seed", "schedule", "teacher.sampling.guidance_scale", "teacher.negative_prompt", "teacher.max_text_tokens",
          "precompute")
RUN_ONLY = ("dir", "device", "wait_for_ranks_s")  # of `precompute`: where it runs and how patiently, never what

SPEC = StageSpec(
    name="precompute", command="dcm precompute", flow="dcm.ops.flows.precompute", params=PARAMS,
    deps=("${shard.dir}", f"${{teacher.out_dir}}/{TEACHER_MODEL}", f"${{teacher.out_dir}}/{MANIFEST}"),
    outs=(Output("${precompute.dir}", persist=True,
                 note="finished shards survive a kill; the stage reuses or removes them itself"),))
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class PrecomputeJob:
    split: str
    index: int
    source: str  # input shard path
    sha256: str  # of the input shard, as the shard manifest recorded it
    fingerprint: str

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


def trajectory_nodes(cfg: DCMConfig) -> list[int]:
    """Node indices stored, descending from the noisiest (the solve's order)."""
    chosen = cfg.precompute.trajectory_nodes
    nodes = range(cfg.schedule.euler_nodes) if chosen == "all" else chosen
    return sorted(set(nodes), reverse=True)


def sample_seed(seed: int, key: str) -> int:
    """The trajectory noise of a sample depends on the run seed and its key only (not on batching)."""
    return int(sha256_json([seed, key])[:15], 16)


def plan(cfg: DCMConfig, teacher_hash: str) -> list[PrecomputeJob]:
    shard_dir = Path(cfg.shard.dir)
    manifest_path = shard_manifest(cfg)
    if not manifest_path.is_file():
        raise StageError(f"{manifest_path} not found: run the shard stage first (dvc repro shard)")
    shards = read_json(manifest_path)
    # Only what changes the bytes: where it runs and how long rank 0 waits do not.
    settings = param_values(cfg, PARAMS)
    settings["precompute"] = {k: v for k, v in settings["precompute"].items() if k not in RUN_ONLY}
    settings["teacher"] = teacher_hash
    jobs = []
    for split in SPLITS:
        for index, entry in enumerate(shards["splits"][split]["shards"]):
            jobs.append(PrecomputeJob(split, index, str(shard_dir / entry["path"]), entry["sha256"],
                                      sha256_json({**settings, "input": entry["sha256"]})))
    return jobs


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def write_job(job: PrecomputeJob, cfg: DCMConfig, teacher, out_dir: Path) -> dict:
    """Encode one input shard (or reuse its finished output)."""
    previous = finished_sidecar(out_dir, job.name, job.fingerprint)
    if previous is not None:
        return {**previous, "reused": True}
    pre = cfg.precompute
    dtype = DTYPES[pre.dtype]
    device = next(teacher.transformer.parameters()).device
    verify_shard(job.source, job.sha256)
    samples = [decode_sample(raw) for raw in read_shard(job.source)]
    nodes = trajectory_nodes(cfg)
    sigmas = sampling_sigmas(cfg.schedule, cfg.schedule.euler_nodes)  # all nodes, descending, then 0
    positions = [cfg.schedule.euler_nodes - 1 - n for n in nodes]  # node n ↔ sigmas[euler_nodes − 1 − n]
    limit = len(samples) if pre.trajectories_per_shard is None else pre.trajectories_per_shard
    uncond_one = teacher.encode_prompts([cfg.teacher.negative_prompt])
    tar_path, sidecar_path = shard_paths(out_dir, job.name)
    with atomic_path(tar_path) as tmp, open(tmp, "wb") as handle:
        writer = shard_writer(handle, job.split, job.index)
        for first, batch in zip(range(0, len(samples), pre.batch_size), _batches(samples, pre.batch_size)):
            captions = [s["caption"] for s in batch]
            latents = teacher.encode_video(clips_to_video(np.stack([s["clip"] for s in batch])).to(device))
            text = teacher.encode_prompts(captions)
            solve = [i for i in range(len(batch)) if first + i < limit]
            states = final = None
            if solve:
                noise = seeded_noise([sample_seed(cfg.seed, batch[i]["key"]) for i in solve], latents.shape[1:], device)
                cond = {k: v[solve] for k, v in text.items()}
                final, path = euler_sample(teacher, noise, sigmas, cond, expand_uncond(uncond_one, len(solve)),
                                           cfg.teacher.sampling.guidance_scale, keep_states=True)
                states = torch.stack([path[p] for p in positions], dim=1)
            for i, sample in enumerate(batch):
                tensors = {"latents": latents[i], **{f"text.{k}": v[i] for k, v in text.items()}}
                if i in solve:
                    row = solve.index(i)
                    tensors.update(trajectory=states[row], trajectory_x0=final[row],
                                   trajectory_nodes=torch.tensor(nodes, dtype=torch.int64))
                tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
                           for k, v in tensors.items()}
                if bad := non_finite(tensors):
                    raise StageError(f"precompute: sample {sample['key']} of {job.source} came out with non-finite "
                                     f"values in {bad}: the teacher or its VAE diverged (try precompute.dtype: "
                                     "float32, or check the teacher); finished shards are kept")
                writer.write({"__key__": sample["key"], "tensors.safetensors": safetensors_bytes(tensors),
                              "caption.txt": sample["caption"].encode(),
                              "meta.json": json.dumps(sample["meta"], sort_keys=True).encode()})
        writer.close()
    record = {"name": job.name, "split": job.split, "samples": len(samples), "sha256": sha256_file(tar_path),
              "bytes": tar_path.stat().st_size, "fingerprint": job.fingerprint,
              "trajectories": min(limit, len(samples))}
    write_json_atomic(sidecar_path, record)
    return {**record, "reused": False}


def finalize(cfg: DCMConfig, jobs: list[PrecomputeJob], records: list[dict], teacher, teacher_hash: str,
             out_dir: Path) -> dict:
    removed = remove_stale(out_dir, {j.name for j in jobs})
    uncond = teacher.encode_prompts([cfg.teacher.negative_prompt])
    with atomic_path(out_dir / EMPTY_PROMPT) as tmp:
        save_file({k: v[0].detach().cpu().contiguous() for k, v in uncond.items()}, str(tmp))
    manifest = {
        "stage": "precompute", "family": cfg.teacher.family, "teacher_hash": teacher_hash,
        "dtype": cfg.precompute.dtype, "trajectory_nodes": trajectory_nodes(cfg),
        "guidance_scale": cfg.teacher.sampling.guidance_scale, "negative_prompt": EMPTY_PROMPT,
        "splits": {split: {"samples": sum(r["samples"] for r in records if r["split"] == split),
                           "trajectories": sum(r["trajectories"] for r in records if r["split"] == split),
                           "shards": [{k: r[k] for k in ("name", "samples", "sha256", "bytes", "trajectories")}
                                      | {"path": f"{split}/{r['name']}.tar"} for r in records if r["split"] == split]}
                   for split in SPLITS},
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return {**manifest, "removed_stale": removed}


def run_precompute_stage(cfg: DCMConfig, rank: int | None = None, world: int | None = None) -> dict | None:
    """Process this rank's shards; rank 0 then waits for the others and writes the manifest."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    out_dir = Path(cfg.precompute.dir)
    device = resolve_device(cfg.precompute.device)
    teacher = load_teacher(cfg, device)
    teacher_hash = teacher_content_hash(cfg)
    jobs = plan(cfg, teacher_hash)
    for job in tracked(jobs[rank::world], "precompute", "shard"):
        write_job(job, cfg, teacher, out_dir)
    if rank != 0:
        return None
    deadline = time.monotonic() + cfg.precompute.wait_for_ranks_s
    while True:
        records = [finished_sidecar(out_dir, job.name, job.fingerprint) for job in jobs]
        if all(records):
            break
        if time.monotonic() > deadline:
            missing = [job.name for job, record in zip(jobs, records) if not record]
            raise StageError(f"precompute: shards {missing[:5]} were not finished by the other ranks within "
                             f"precompute.wait_for_ranks_s; finished shards are kept, re-run to continue")
        time.sleep(1.0)
    return finalize(cfg, jobs, records, teacher, teacher_hash, out_dir)
