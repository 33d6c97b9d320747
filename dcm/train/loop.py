"""The one training loop every method shares: optimiser, warm-up, clipping, EMA, bf16 autocast,
gradient accumulation, sharded checkpoints with exact resume, NaN guard, and metric callbacks.

A method supplies `module` (what trains: its parameters with requires_grad) and
`loss(batch, generator, part) -> (loss, logs)`, which draws its random numbers for the whole batch and
computes the loss of the samples in `part` (a slice); optionally `after_step() -> logs` (run after the
optimiser step, e.g. a discriminator step), `state_modules()` / `state_optimizers()` (extra state that
checkpoints carry; optimisers as (module, optimiser), built when first asked, after sharding) and
`frozen_modules()` (models read but not trained, e.g. the teacher). Logs are detached tensors or floats,
or callables read after backward (gradient measurements):
the loop reads them only on logging steps, since each read of a GPU value stalls the GPU queue. Every
random draw goes through the single `generator`, which is checkpointed, so a run stopped at step k and
resumed reproduces an uninterrupted run's loss sequence exactly on CPU, on any number of processes. Under
torchrun every model is sharded with FSDP2 (dcm/train/sharding.py) and each process computes its share of
the batch (dcm/train/distributed.py).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch import nn

from dcm.config import TrainConfig
from dcm.errors import StageError
from dcm.io import sha256_json
from dcm.progress import progress
from dcm.train.checkpoint import FORMAT, latest_checkpoint, load_checkpoint, read_state, save_checkpoint, supersede
from dcm.train.distributed import barrier, mean_across, micro_slices, rank_and_world
from dcm.train.sharding import (compute_policy, data_parallel, full_value, local, recompute_blocks, shard,
                                store_frozen)
from dcm.train.prefetch import Prefetcher, prefetch_kind

_stop_request = threading.Event()  # set by request_stop (a signal handler): the running train() stops at its step


def request_stop(*_signal_args) -> None:
    """Ask a running train() to finish its step, checkpoint and stop early, as at its time limit. Usable as a
    signal handler, so that a scheduler's SIGTERM costs no steps since the last checkpoint."""
    _stop_request.set()


class Method(Protocol):
    module: nn.Module

    def loss(self, batch, generator: torch.Generator, part: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]: ...


class Stream(Protocol):
    def batches(self, size: int) -> Iterator: ...
    def state(self) -> dict: ...
    def restore(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # the whole run's, resumed parts included
    ema: nn.Module | None = None
    resumed_from: int = 0
    stopped_early: bool = False
    resume_s: float = 0.0  # reading the checkpoint it resumed from
    checkpoint_s: list[float] = field(default_factory=list)  # each checkpoint save of this call


def bf16_autocast(device: torch.device, precision: str, cache: bool = True) -> torch.autocast:
    """The loss's compute precision: bf16 autocast where the train config asks for it and the device runs it
    fast (CUDA); weights and optimiser stay fp32. cache=False for a region that steps an optimiser on the
    weights it casts: autocast keeps its bf16 copies until the outermost region ends, so later passes in the
    same region would read the weights as they were before the step."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16" and device.type == "cuda",
                          cache_enabled=cache)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# Train settings that may change between a run and its resumption: how long, how often, where.
RUN_ONLY = ("steps", "time_limit_s", "checkpoint_every", "keep_checkpoints", "log_every", "device", "prefetch",
            "prefetch_batches", "compile", "gradient_checkpointing", "micro_batch", "frozen_dtype")


def training_fingerprint(cfg: TrainConfig, **inputs) -> str:
    """What a checkpoint must match to be resumed: the train settings that shape the result, plus the
    stage's own inputs (model settings, data identity, upstream hashes)."""
    return sha256_json({"train": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RUN_ONLY},
                        **inputs})


def lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """Linear warm-up from 1/warmup to 1, then constant or a half cosine that reaches 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "none":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up as diffusers' EMAModel does: min(decay, (1 + step) / (10 + step)). Without it a 0.999
    EMA would still hold a third of the random initialisation after 1000 steps."""
    return min(decay, (1 + step) / (10 + step))


def compile_blocks(module: nn.Module) -> None:
    """Compile each repeated block of every diffusers model inside `module` in place (diffusers'
    regional compilation): state-dict keys stay as they are, and the compile cost is one block's."""
    models = [m for m in module.modules() if getattr(m, "_repeated_blocks", None)]
    if not models:
        raise StageError(f"train.compile=blocks needs a diffusers model with repeated blocks; "
                         f"{type(module).__name__} holds none: set compile to none")
    for model in models:
        model.compile_repeated_blocks()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Sharded alike, the EMA and the model hold the same slices: each process updates its own."""
    torch._foreach_lerp_([local(p) for p in ema.parameters()], [local(p).detach() for p in model.parameters()],
                         1.0 - decay)


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded by one draw from the CPU generator: large noise tensors are drawn
    where they are used, and the CPU generator's state alone still makes runs resumable."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device).manual_seed(seed)


def prepare_models(method: Method, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module | None, dict]:
    """The EMA copy, activation checkpointing, compilation and (under torchrun) FSDP2 sharding of every model
    the step touches, in that order; returns the EMA and the modules a checkpoint carries."""
    ema = copy.deepcopy(method.module).requires_grad_(False) if cfg.ema_decay > 0 else None
    if cfg.gradient_checkpointing:  # after the copies: they never run backward
        recompute_blocks(method.module)
    if cfg.compile in ("blocks", "all"):  # after the EMA copy: the copy stays a plain module
        compile_blocks(method.module)
    extra = getattr(method, "state_modules", dict)()
    frozen = getattr(method, "frozen_modules", list)()
    for module in frozen:
        store_frozen(module, cfg.frozen_dtype, device, cfg.precision)
        if cfg.compile == "all":  # the teacher's forwards (targets, CFG, the critic's taps) are most of a step's work
            compile_blocks(module)
    if data_parallel():
        policy = compute_policy(device, cfg.precision)
        for module in [method.module, *extra.values(), *([ema] if ema is not None else [])]:
            shard(module, device, policy)
        for module in frozen:
            shard(module, device)
    return ema, {"model": method.module, **({"ema": ema} if ema is not None else {}), **extra}


def train(method: Method, stream: Stream, cfg: TrainConfig, checkpoint_dir: Path, seed: int,
          on_log: Callable[[int, dict], None] | None = None, stop_after: int | None = None,
          time_limit_s: float | None = None, fingerprint: str = "") -> TrainResult:
    """Train to cfg.steps (resuming from the newest checkpoint); stop early after `stop_after` steps of
    this call or `time_limit_s` seconds, checkpointing first so that the next call continues."""
    device = next(method.module.parameters()).device
    ema, modules = prepare_models(method, cfg, device)
    trainable = [p for p in method.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.decay))
    generator = torch.Generator().manual_seed(seed)
    optimizers = {"optimizer": (method.module, optimizer), **getattr(method, "state_optimizers", dict)()}
    after_step = getattr(method, "after_step", None)
    result = TrainResult(steps=0)
    rank, world = rank_and_world()
    latest = latest_checkpoint(checkpoint_dir)
    found = read_state(latest) if latest is not None else {"fingerprint": fingerprint, "format": FORMAT}
    if found.get("fingerprint", "unknown") != fingerprint or found.get("format") != FORMAT:
        # Trained under other settings or data (or written by an older dcm): continuing would silently
        # ignore the change.
        if rank == 0:
            moved = supersede(checkpoint_dir, str(found.get("fingerprint", "unknown"))[:12])
            print(f"checkpoints in {checkpoint_dir} were trained with other settings; moved to {moved}, starting anew")
        latest = None
    barrier()
    if latest is not None:
        loading = time.perf_counter()
        state = load_checkpoint(latest, modules, optimizers, generator)
        result.resume_s = time.perf_counter() - loading
        scheduler.load_state_dict(state["scheduler"])
        stream.restore(state["stream"])
        result.steps = result.resumed_from = state["step"]
        result.losses = list(state["losses"])
    autocast = bf16_autocast(device, cfg.precision)

    def checkpoint() -> None:  # collective: every rank writes its shards
        saving = time.perf_counter()
        save_checkpoint(checkpoint_dir, result.steps, modules, optimizers, generator,
                        {"stream": batches.consumed_state, "losses": result.losses,
                         "scheduler": scheduler.state_dict(), "fingerprint": fingerprint}, cfg.keep_checkpoints)
        result.checkpoint_s.append(time.perf_counter() - saving)

    started, window_start, done_here = time.perf_counter(), time.perf_counter(), 0
    batches = Prefetcher(stream, cfg.batch_size, cfg.prefetch_batches, prefetch_kind(cfg.prefetch, device.type))
    bar = progress(cfg.steps, f"training {checkpoint_dir.name}", "step", initial=result.steps)
    try:
        while result.steps < cfg.steps:
            method.module.train()
            batch = next(batches)
            parts = micro_slices(len(batch), cfg.micro_batch, rank, world)
            optimizer.zero_grad(set_to_none=True)
            draws = generator.get_state()
            step_loss, logs = 0.0, {}
            for part in parts:
                generator.set_state(draws)  # every micro-batch sees the whole batch's draws, as one pass would
                with autocast:
                    loss, part_logs = method.loss(batch, generator, part)
                (loss / len(parts)).backward()
                step_loss = step_loss + loss.detach().float() / len(parts)
                logs = {key: logs.get(key, 0.0) + (value() if callable(value) else value) / len(parts)
                        for key, value in part_logs.items()}  # after backward: callables read what it measured
            grad_norm = full_value(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
            # One host sync per step for both guards and the clock (each sync stalls the GPU queue). The time
            # limit is averaged too: data-parallel ranks must agree to stop at the same step, or one would
            # wait for the others' gradients for ever.
            out_of_time = time_limit_s is not None and time.perf_counter() - started > time_limit_s
            late = float(_stop_request.is_set() or out_of_time)
            shared = mean_across(torch.stack([step_loss, torch.tensor(late, device=step_loss.device)]))
            loss_value, late_share, norm_value = torch.cat([shared, grad_norm.float().view(1)]).tolist()
            if not math.isfinite(loss_value) or not math.isfinite(norm_value):
                what = f"loss became {loss_value}" if not math.isfinite(loss_value) else f"gradient norm became {norm_value}"
                raise StageError(f"{what} at step {result.steps + 1}; the last good checkpoint in {checkpoint_dir} "
                                 "is kept. Lower the learning rate or check the data")
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                logs = {**logs, **after_step()}
            if ema is not None:
                ema_update(ema, method.module, ema_decay_at(result.steps, cfg.ema_decay))
            result.steps += 1
            done_here += 1
            result.losses.append(loss_value)
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
            if on_log and (result.steps % cfg.log_every == 0 or result.steps == cfg.steps):
                elapsed = time.perf_counter() - window_start
                on_log(result.steps, {"loss": result.losses[-1], "grad_norm": norm_value,
                                      "lr": scheduler.get_last_lr()[0], **{k: float(v) for k, v in logs.items()},
                                      "samples_per_s": cfg.log_every * cfg.batch_size / max(elapsed, 1e-9)})
                window_start = time.perf_counter()
            stopping = (stop_after is not None and done_here >= stop_after) or late_share > 0
            if result.steps % cfg.checkpoint_every == 0 or result.steps == cfg.steps or stopping:
                checkpoint()
            if stopping and result.steps < cfg.steps:
                result.stopped_early = True
                break
    finally:
        bar.close()
        batches.close()
        _stop_request.clear()  # a request stops one run, not the next in this process
    result.ema = ema
    return result
