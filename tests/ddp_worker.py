"""One process of a data-parallel stage run, as torchrun starts it (tests/test_distributed.py):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py \
        <params.yaml> <teacher|semantic|detail> <losses.json> [override ...]

Each process joins the gloo group, runs the stage function; rank 0 writes the run's loss sequence, or
the step a time limit stopped it at. DDP_RANK0_OVERRIDES (space-separated key=value) apply to rank 0 only:
a time limit that only one rank's clock would hit.
"""

import json
import os
import sys
from pathlib import Path

from dcm.config import load_config
from dcm.errors import StoppedEarly
from dcm.stages.distill import run_distill_stage
from dcm.stages.distill import train_config
from dcm.train.distributed import init_from_env, local_slice
from dcm.stages.teacher import run_teacher_stage

if __name__ == "__main__":
    params, method, out, *overrides = sys.argv[1:]
    rank, world = init_from_env()
    if rank == 0:
        overrides += os.environ.get("DDP_RANK0_OVERRIDES", "").split()
    cfg = load_config(params, overrides)
    try:
        result = run_teacher_stage(cfg) if method == "teacher" else run_distill_stage(cfg, method)
    except StoppedEarly as stopped:
        if rank == 0:
            Path(out).write_text(json.dumps({"world": world, "stopped": str(stopped)}))
        sys.exit(0)
    batch = (cfg.teacher.toy.train if method == "teacher" else train_config(cfg, method)).batch_size
    share = local_slice(batch)
    if rank == 0:
        Path(out).write_text(json.dumps({"world": world, "batch": batch, "share": share.stop - share.start,
                                         "losses": result["losses"]}))
