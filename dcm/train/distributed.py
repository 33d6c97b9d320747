"""Data parallelism for the shared training loop (torchrun: NCCL on GPUs, gloo on CPUs).

Every process reads the same global batch and draws the same random numbers for all of it (one seeded
generator, identical on every rank); each then computes the loss of its own contiguous slice of the
samples, and the gradients are averaged across processes before the optimiser step. So N processes
take exactly the step one process takes on the whole global batch (up to float summation order), which
is what tests/test_distributed.py checks. Reading the whole batch on every rank costs little next to a
video model's step (precomputed latents are a file read).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from dcm.errors import StageError

BUCKET_BYTES = 256 << 20  # gradients are averaged in flat buckets of about this size (memory vs calls)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return rank_and_world()


def local_slice(total: int) -> slice:
    """This process's contiguous share of a global batch of `total` samples."""
    rank, world = rank_and_world()
    if total % world:
        raise StageError(f"the batch size ({total}) must be divisible by the number of processes ({world}): "
                         "change train.batch_size or the process count")
    share = total // world
    return slice(rank * share, (rank + 1) * share)


def average_gradients(parameters) -> None:
    """Replace each gradient by its mean over the processes (flat buckets, one all-reduce each)."""
    _, world = rank_and_world()
    if world == 1:
        return
    buckets: list[list[torch.Tensor]] = [[]]
    size = 0
    for grad in (p.grad for p in parameters if p.grad is not None):
        nbytes = grad.numel() * grad.element_size()
        if buckets[-1] and (size + nbytes > BUCKET_BYTES or grad.dtype != buckets[-1][0].dtype):
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += nbytes
    for bucket in filter(None, buckets):
        flat = torch._utils._flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        flat /= world
        for grad, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            grad.copy_(synced)


def mean_across(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over the processes (every rank gets it)."""
    _, world = rank_and_world()
    if world == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()
