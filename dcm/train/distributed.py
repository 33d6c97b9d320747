"""Processes of a data-parallel run (torchrun: NCCL on GPUs, gloo on CPUs) and how a global batch is split.

Every process reads the same global batch and draws the same random numbers for all of it (one seeded
generator, identical on every rank); each computes the loss of its own contiguous share, in micro-batches
when the share is larger than train.micro_batch. FSDP2 (dcm/train/sharding.py) averages the gradients
across processes, and the loop divides by the number of micro-batches, so N processes take exactly the step
one process takes on the whole global batch (up to float summation order): tests/test_distributed.py.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from dcm.errors import StageError


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes (it sets WORLD_SIZE, even to 1); a no-op outside torchrun."""
    if "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)
    return rank_and_world()


def micro_slices(total: int, micro_batch: int, rank: int, world: int) -> list[slice]:
    """Rank `rank`'s contiguous share of a global batch of `total` samples, cut into micro-batches of
    `micro_batch` samples (0: the whole share at once)."""
    if total % world:
        raise StageError(f"the batch size ({total}) must be divisible by the number of processes ({world}): "
                         "change train.batch_size or distributed.nproc_per_node")
    share = total // world
    size = micro_batch or share
    if share % size:
        raise StageError(f"each process's share of the batch ({total} / {world} = {share}) must be divisible by "
                         f"train.micro_batch ({micro_batch}): change one of them")
    start = rank * share
    return [slice(start + offset, start + offset + size) for offset in range(0, share, size)]


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
