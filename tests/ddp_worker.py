"""One process of a data-parallel stage run, as torchrun starts it (tests/test_distributed.py):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py \
        <params.yaml> <teacher|semantic|detail> <losses.json> [override ...]

Each process joins the gloo group, runs the stage function; rank 0 writes the run's loss sequence.
"""

import json
import sys
from pathlib import Path

from dcm.config import load_config
from dcm.train.distill import run_distill_stage
from dcm.train.distill import train_config
from dcm.train.distributed import init_from_env, local_slice
from dcm.train.teacher import run_teacher_stage

if __name__ == "__main__":
    params, method, out, *overrides = sys.argv[1:]
    rank, world = init_from_env()
    cfg = load_config(params, overrides)
    result = run_teacher_stage(cfg) if method == "teacher" else run_distill_stage(cfg, method)
    batch = (cfg.teacher.toy.train if method == "teacher" else train_config(cfg, method)).batch_size
    share = local_slice(batch)
    if rank == 0:
        Path(out).write_text(json.dumps({"world": world, "batch": batch, "share": share.stop - share.start,
                                         "losses": result["losses"]}))
