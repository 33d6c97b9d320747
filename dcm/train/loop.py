"""The one training loop every method shares: optimiser, warm-up, clipping, EMA, bf16 autocast,
checkpoints with exact resume, NaN guard, and metric callbacks.

A method supplies `module` (what trains: its parameters with requires_grad) and `loss(batch, generator)
-> (loss, logs)`; optionally `after_step() -> logs` (run after the optimiser step, e.g. a discriminator
step) and `state_modules()` / `state_optimizers()`, extra state that checkpoints carry. Logs are detached
tensors (or floats): the loop reads them only on logging steps, since each read of a GPU value stalls the
GPU queue. Every random draw goes through the single `generator`, which is checkpointed, so a run
stopped at step k and resumed reproduces an uninterrupted run's loss sequence exactly on CPU. Under torchrun the loop is data
parallel (dcm/train/distributed.py): methods draw for the whole batch and compute their slice of it.
"""

from __future__ import annotations

import copy
import math
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
from dcm.train.checkpoint import latest_checkpoint, load_checkpoint, read_state, save_checkpoint, supersede
from dcm.train.distributed import average_gradients, barrier, mean_across, rank_and_world
from dcm.train.prefetch import Prefetcher, prefetch_kind


class Method(Protocol):
    module: nn.Module

    def loss(self, batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]: ...


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# Train settings that may change between a run and its resumption: how long, how often, where.
RUN_ONLY = ("steps", "time_limit_s", "checkpoint_every", "keep_checkpoints", "log_every", "device", "prefetch",
            "prefetch_batches", "compile", "gradient_checkpointing")


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


def enable_gradient_checkpointing(module: nn.Module) -> None:
    """Every diffusers model inside `module` (the student's experts) recomputes its blocks in backward."""
    models = [m for m in module.modules() if getattr(m, "_supports_gradient_checkpointing", False)]
    if not models:
        raise StageError(f"train.gradient_checkpointing needs a diffusers model; {type(module).__name__} holds none: "
                         "set it to false")
    for model in models:
        model.enable_gradient_checkpointing()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded by one draw from the CPU generator: large noise tensors are drawn
    where they are used, and the CPU generator's state alone still makes runs resumable."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device).manual_seed(seed)


def train(method: Method, stream: Stream, cfg: TrainConfig, checkpoint_dir: Path, seed: int,
          on_log: Callable[[int, dict], None] | None = None, stop_after: int | None = None,
          time_limit_s: float | None = None, fingerprint: str = "") -> TrainResult:
    """Train to cfg.steps (resuming from the newest checkpoint); stop early after `stop_after` steps of
    this call or `time_limit_s` seconds, checkpointing first so that the next call continues."""
    device = next(method.module.parameters()).device
    trainable = [p for p in method.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.decay))
    ema = copy.deepcopy(method.module).requires_grad_(False) if cfg.ema_decay > 0 else None
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(method.module)
    if cfg.compile == "blocks":  # after the EMA copy: the copy stays a plain module
        compile_blocks(method.module)
    generator = torch.Generator().manual_seed(seed)
    modules = {"model": method.module, **({"ema": ema} if ema is not None else {}),
               **getattr(method, "state_modules", dict)()}
    optimizers = {"optimizer": optimizer, **getattr(method, "state_optimizers", dict)()}
    after_step = getattr(method, "after_step", None)
    result = TrainResult(steps=0)
    rank, _ = rank_and_world()
    latest = latest_checkpoint(checkpoint_dir)
    previous = read_state(latest).get("fingerprint", "unknown") if latest is not None else fingerprint
    if previous != fingerprint:
        # Trained under other settings or data: continuing would silently ignore the change.
        if rank == 0:
            moved = supersede(checkpoint_dir, str(previous)[:12])
            print(f"checkpoints in {checkpoint_dir} were trained with other settings; moved to {moved}, starting anew")
        latest = None
    barrier()
    if latest is not None:
        state = load_checkpoint(latest, modules, optimizers, generator)
        scheduler.load_state_dict(state["scheduler"])
        stream.restore(state["stream"])
        result.steps = result.resumed_from = state["step"]
        result.losses = list(state["losses"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16" and device.type == "cuda")

    def checkpoint() -> None:  # every rank holds the same state: rank 0 writes it
        if rank == 0:
            save_checkpoint(checkpoint_dir, result.steps, modules, optimizers, generator,
                            {"stream": batches.consumed_state, "losses": result.losses,
                             "scheduler": scheduler.state_dict(), "fingerprint": fingerprint}, cfg.keep_checkpoints)
        barrier()

    started, window_start, done_here = time.perf_counter(), time.perf_counter(), 0
    batches = Prefetcher(stream, cfg.batch_size, cfg.prefetch_batches, prefetch_kind(cfg.prefetch, device.type))
    bar = progress(cfg.steps, f"training {checkpoint_dir.name}", "step", initial=result.steps)
    try:
        while result.steps < cfg.steps:
            method.module.train()
            batch = next(batches)
            with autocast:
                loss, logs = method.loss(batch, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(trainable)  # data parallel: every rank now holds the whole batch's gradient
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            # One host sync per step for both guards and the clock (each sync stalls the GPU queue). The time
            # limit is averaged too: data-parallel ranks must agree to stop at the same step, or one would
            # wait for the others' gradients for ever.
            late = float(time_limit_s is not None and time.perf_counter() - started > time_limit_s)
            shared = mean_across(torch.stack([loss.detach().float(), torch.tensor(late, device=loss.device)]))
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
    result.ema = ema
    return result
