"""One process of a data-parallel stage run, as torchrun starts it (tests/test_distributed.py):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py \
        <params.yaml> <teacher|semantic|detail> <losses.json> [override ...]

Each process joins the gloo group, runs the stage function; rank 0 writes the run's loss sequence, or
the step a time limit stopped it at. DDP_RANK0_OVERRIDES (space-separated key=value) apply to rank 0 only:
a time limit that only one rank's clock would hit. DDP_STOP_AFTER stops both ranks after that many steps
(with a checkpoint), as a stop request would.
"""

import json
import os
import sys
from pathlib import Path

from dcm.config import load_config
from dcm.errors import StoppedEarly
from dcm.stages.distill import run_distill_stage
from dcm.stages.distill import train_config
from dcm.train.distributed import init_from_env, micro_slices
from dcm.stages.teacher import run_teacher_stage

if __name__ == "__main__":
    params, method, out, *overrides = sys.argv[1:]
    rank, world = init_from_env()
    if rank == 0:
        overrides += os.environ.get("DDP_RANK0_OVERRIDES", "").split()
    cfg = load_config(params, overrides)
    stop = int(os.environ["DDP_STOP_AFTER"]) if os.environ.get("DDP_STOP_AFTER") else None
    try:
        result = (run_teacher_stage(cfg, stop_after=stop) if method == "teacher"
                  else run_distill_stage(cfg, method, stop_after=stop))
    except StoppedEarly as stopped:
        if rank == 0:
            Path(out).write_text(json.dumps({"world": world, "stopped": str(stopped)}))
        sys.exit(0)
    train = cfg.teacher.toy.train if method == "teacher" else train_config(cfg, method)
    parts = micro_slices(train.batch_size, train.micro_batch, rank, world)
    if rank == 0:
        Path(out).write_text(json.dumps({"world": world, "batch": train.batch_size, "micro_batches": len(parts),
                                         "share": sum(p.stop - p.start for p in parts), "losses": result["losses"],
                                         "resumed_from": result["resumed_from"]}))
