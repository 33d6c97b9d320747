"""Worker processes for the GPU-heavy stages, started by the stage command itself.

`dcm teacher`, `dcm precompute`, `dcm distill ...` and `dcm evaluate` with distributed.nproc_per_node × nnodes
above 1 start that many workers through torchrun's elastic launcher, each running the same command. Rank 0 runs the
stage's Prefect flow (the stage's one flow run and one MLflow run); the other ranks run the stage function
itself, log nothing and write only their own work (checkpoint shards, precompute's shards, evaluation rows). `dvc repro` and the Prefect deployment run the same commands, so they use
every GPU of the machine. A failed worker stops the others and fails the command with its own message.
"""

from __future__ import annotations

import os
import sys
import uuid

from dcm.config import DCMConfig, DistributedConfig
from dcm.errors import StageError

FAILURE_POLL_S = 0.5  # how often the launcher looks at its workers (a failure stops the rest this soon)


def in_worker() -> bool:
    """This process was started by torchrun or by `launch` (it is one rank of a run)."""
    return "LOCAL_RANK" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ


def join(command: str) -> int:
    """In a worker: this process's rank. Training stages join the process group (FSDP2 needs it);
    precompute and evaluate share their work through files and only take their own GPU, since a process
    group would also draw vbench's own collectives into workers that are not running them."""
    if command in ("teacher", "distill"):
        from dcm.train.distributed import init_from_env
        return init_from_env()[0]
    import torch
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return int(os.environ["RANK"])


def process_count(cfg: DistributedConfig) -> int:
    return cfg.nproc_per_node * cfg.nnodes


def launch(argv: list[str], cfg: DistributedConfig, name: str) -> None:
    """Run `dcm <argv>` in nproc_per_node workers on this machine (joined by the other machines' workers
    at rdzv_endpoint when nnodes > 1); returns when all succeeded."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    one_machine = cfg.nnodes == 1
    config = LaunchConfig(
        min_nodes=cfg.nnodes, max_nodes=cfg.nnodes, nproc_per_node=cfg.nproc_per_node,
        # one machine: a free port and a fresh id (torchrun --standalone); several: the same id on each
        run_id=uuid.uuid4().hex if one_machine else f"dcm-{name}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0" if one_machine else cfg.rdzv_endpoint,
        max_restarts=cfg.max_restarts, monitor_interval=FAILURE_POLL_S)
    # Workers share the machine's cores (torchrun's own default is one thread each).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.nproc_per_node)))
    try:
        elastic_launch(config, sys.executable)("-m", "dcm.ops.cli", *argv)
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        message = failure.message["message"] if isinstance(failure.message, dict) else failure.message
        raise StageError(f"worker rank {rank} of {process_count(cfg)} failed: {message}") from None


def record_failure(error: BaseException) -> None:
    """In a worker: leave the one-line error where the launcher reads it (TORCHELASTIC_ERROR_FILE)."""
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
    ErrorHandler().record_exception(error)


def run_on_other_ranks(command: str, cfg: DCMConfig, methods: list[str]) -> None:
    """What ranks 1..N-1 run for a stage command: the stage functions rank 0's flow calls, in the same order,
    without Prefect or MLflow."""
    if command == "teacher":
        from dcm.stages.teacher import run_teacher_stage
        run_teacher_stage(cfg)
        return
    if command == "precompute":  # every world-th input shard; rank 0 waits for them and writes the manifest
        from dcm.stages.precompute import run_precompute_stage
        run_precompute_stage(cfg)
        return
    if command == "evaluate":  # every world-th row; rank 0 collects them and writes the report
        from dcm.stages.evaluate import run_evaluate_stage
        run_evaluate_stage(cfg)
        return
    from dcm.stages.distill import run_distill_stage
    for method in methods:
        run_distill_stage(cfg, method)


def distributed_stage(command: str, cfg: DCMConfig) -> bool:
    """Whether `dcm <command>` has work to spread over processes: distillation, precompute, evaluation, and the
    toy teacher when trained (recording a real teacher or installing the shipped one has none)."""
    if command in ("distill", "precompute", "evaluate"):
        return True
    return command == "teacher" and cfg.teacher.family == "toy" and cfg.teacher.toy.trains


def methods_of(requested: list[str], cfg: DCMConfig) -> list[str]:
    return list(cfg.distill.baselines) if requested == ["baselines"] else requested

