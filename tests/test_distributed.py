"""Data parallelism: two gloo processes under torchrun take exactly the steps one process takes on the
same global batch (every stage's loss sequence, up to float summation order)."""

import json
import os
import subprocess
import sys

import pytest

from dcm.stages.shard import run_shard_stage
from dcm.stages.distill import run_distill_stage
from dcm.stages.teacher import run_teacher_stage
from tests.conftest import REPO, TINY_TEACHER

pytestmark = pytest.mark.integration

WORKER = REPO / "tests" / "ddp_worker.py"


def run_two(method: str, overrides: list[str], out, rank0_overrides: str = "", timeout: int = 600) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(REPO / "params.yaml"), method, str(out), *overrides]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "DDP_RANK0_OVERRIDES": rank0_overrides})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def two_processes(method: str, overrides: list[str], out) -> list[float]:
    record = run_two(method, overrides, out)
    assert record["world"] == 2 and record["share"] * 2 == record["batch"]  # each computed half the batch
    return record["losses"]


def test_teacher_pretraining(make_config, tmp_path):
    one = make_config(*TINY_TEACHER)
    run_shard_stage(one)
    single = run_teacher_stage(one)["losses"]
    overrides = [f"shard.dir={one.shard.dir}", f"teacher.out_dir={tmp_path / 'ddp'}",
                 f"teacher.checkpoint_dir={tmp_path / 'ddp-ckpt'}", *TINY_TEACHER]
    assert two_processes("teacher", overrides, tmp_path / "losses.json") == pytest.approx(single, rel=1e-4)


def test_a_time_limit_one_rank_hits_stops_both_at_the_same_step_and_the_run_continues(make_config, tmp_path):
    """Only rank 0's clock runs out (its time limit is 1 µs): both ranks must stop after the same step (a rank
    that went on would wait for the other's gradients for ever), and the next run continues to the losses
    of an uninterrupted one."""
    one = make_config(*TINY_TEACHER)
    run_shard_stage(one)
    single = run_teacher_stage(one)["losses"]
    overrides = [f"shard.dir={one.shard.dir}", f"teacher.out_dir={tmp_path / 'ddp'}",
                 f"teacher.checkpoint_dir={tmp_path / 'ddp-ckpt'}", *TINY_TEACHER]
    stopped = run_two("teacher", overrides, tmp_path / "stopped.json", "teacher.toy.train.time_limit_s=0.000001", timeout=180)
    assert "stopped at step 1 of" in stopped["stopped"]
    assert two_processes("teacher", overrides, tmp_path / "losses.json") == pytest.approx(single, rel=1e-4)


@pytest.mark.parametrize("method", ["semantic", "detail"])
def test_distillation_stages(config, prepared, tmp_path, method):
    cfg = config()
    if method == "detail":
        run_distill_stage(cfg, "semantic")
    single = run_distill_stage(cfg, method)["losses"]
    overrides = [*prepared, f"distill.out_dir={cfg.distill.out_dir}", f"distill.checkpoint_dir={tmp_path / 'ddp'}"]
    assert two_processes(method, overrides, tmp_path / "losses.json") == pytest.approx(single, rel=1e-4)
