"""Data parallelism through FSDP2: two gloo processes under torchrun take exactly the steps one process takes
on the same global batch (every stage's loss sequence, up to float summation order), and a sharded
checkpoint written by either resumes on the other."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from dcm.errors import StoppedEarly
from dcm.io import read_json
from dcm.stages.shard import run_shard_stage
from dcm.stages.distill import run_distill_stage
from dcm.stages.teacher import run_teacher_stage
from dcm.train.checkpoint import SHARDS, latest_checkpoint, read_state
from tests.conftest import REPO, TINY_TEACHER
from tests.project import STAGES, copy_project, dvc, run_in, stage_runs
from tests.test_pipeline_dvc import flow_runs

pytestmark = pytest.mark.integration

WORKER = REPO / "tests" / "ddp_worker.py"


def run_two(method: str, overrides: list[str], out, rank0_overrides: str = "", timeout: int = 600,
            stop_after: int | None = None) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(REPO / "params.yaml"), method, str(out), *overrides]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "DDP_RANK0_OVERRIDES": rank0_overrides,
                               "DDP_STOP_AFTER": str(stop_after or "")})
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


def test_teacher_checkpoints_move_between_one_and_two_processes(make_config, tmp_path):
    """Stopped after 2 of 4 steps on 2 processes (in micro-batches of 1), resumed on 1; and the other way
    round: each continues the uninterrupted single-process loss sequence."""
    one = make_config(*TINY_TEACHER)
    run_shard_stage(one)
    single = run_teacher_stage(one)["losses"]

    def elsewhere(name: str) -> list[str]:
        return [f"shard.dir={one.shard.dir}", f"teacher.out_dir={tmp_path / name}",
                f"teacher.checkpoint_dir={tmp_path / name / 'ckpt'}", *TINY_TEACHER]

    two_then_one = elsewhere("two-then-one")
    stopped = run_two("teacher", [*two_then_one, "teacher.toy.train.micro_batch=1"], tmp_path / "a.json", stop_after=2)
    assert "stopped at step 2 of 4" in stopped["stopped"]
    resumed = run_teacher_stage(make_config(*two_then_one))
    assert resumed["resumed_from"] == 2 and resumed["losses"] == pytest.approx(single, rel=1e-4)

    one_then_two = elsewhere("one-then-two")
    with pytest.raises(StoppedEarly):
        run_teacher_stage(make_config(*one_then_two), stop_after=2)
    record = run_two("teacher", one_then_two, tmp_path / "b.json")
    assert record["resumed_from"] == 2 and record["losses"] == pytest.approx(single, rel=1e-4)


def test_a_detail_checkpoint_of_two_processes_resumes_in_one(config, prepared, tmp_path):
    """The detail stage's state is the most varied: a partial student (LoRA and copied layers over a frozen
    expert), the discriminator and its own optimiser."""
    cfg = config()
    run_distill_stage(cfg, "semantic")
    single = run_distill_stage(cfg, "detail")["losses"]
    checkpoints = tmp_path / "ddp"
    overrides = [*prepared, f"distill.out_dir={cfg.distill.out_dir}", f"distill.checkpoint_dir={checkpoints}"]
    stopped = run_two("detail", overrides, tmp_path / "losses.json", stop_after=2)
    assert "stopped at step 2" in stopped["stopped"]
    resumed = run_distill_stage(config(f"distill.checkpoint_dir={checkpoints}"), "detail")
    assert resumed["resumed_from"] == 2 and resumed["losses"] == pytest.approx(single, rel=1e-4)


def test_micro_batches_take_the_step_of_the_whole_batch(make_config):
    """Gradient accumulation: four micro-batches of one sample give the loss sequence of batches of four."""
    whole = make_config(*TINY_TEACHER)
    run_shard_stage(whole)
    expected = run_teacher_stage(whole)["losses"]
    split = make_config(*TINY_TEACHER, "teacher.toy.train.micro_batch=1",
                        f"teacher.checkpoint_dir={whole.teacher.checkpoint_dir}-micro")
    assert run_teacher_stage(split)["losses"] == pytest.approx(expected, rel=1e-5)


def test_dvc_repro_on_two_processes_per_machine(tmp_path, prefect_api):
    """distributed.nproc_per_node: 2 and plain `dvc repro`: each training stage ran on two workers (precompute
    and evaluate split their work), and still made exactly one Prefect flow run and one MLflow run; the
    evaluation equals one process's. A worker's error fails the command with its message."""
    project = copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["distributed"]["nproc_per_node"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = dvc(project, "repro", "evaluate")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [stage_runs(project, stage) for stage in STAGES[:6]] == [1, 1, 1, 1, 1, 1]
    assert [len(flow_runs(prefect_api, flow, project))
            for flow in ("teacher", "precompute", "distill", "evaluate")] == [1, 1, 2, 1]
    for stage in ("teacher", "semantic", "detail"):
        newest = latest_checkpoint(project / "data" / "checkpoints" / stage)
        assert read_state(newest)["world_size"] == 2 and len(list((newest / SHARDS).glob("*.safetensors"))) == 2
    assert (project / "data" / "students" / "dcm" / "detail" / "pytorch_lora_weights.safetensors").is_file()
    single = run_in(project, "dcm", "evaluate", "-S", "distributed.nproc_per_node=1", "-S", "evaluate.out_dir=data/eval1")
    assert single.returncode == 0, single.stderr[-3000:]
    split, whole = (read_json(project / "data" / folder / "metrics.json") for folder in ("eval", "eval1"))
    rows = [key for key, value in whole.items() if isinstance(value, dict) and "judge_overall" in value]
    assert len(rows) >= 3 and sorted(rows) == sorted(k for k, v in split.items() if isinstance(v, dict) and "judge_overall" in v)
    for row in rows:  # the same clips and scores; only the clocks differ, and vbench's scores by the lossy mp4
        # encoding it reads (1e-4 relative, measured: the encoder's output depends on its threads)
        exact = lambda metrics: {k: v for k, v in metrics.items() if not k.startswith(("latency_s", "speedup", "vbench"))}
        assert exact(split[row]) == pytest.approx(exact(whole[row]))
        assert {k: v for k, v in split[row].items() if k.startswith("vbench")} == pytest.approx(
            {k: v for k, v in whole[row].items() if k.startswith("vbench")}, rel=1e-3)

    failed = run_in(project, "dcm", "teacher", "-S", "teacher.toy.train.batch_size=3")
    assert failed.returncode == 1
    assert "dcm: StageError: worker rank" in failed.stderr and "of 2 failed" in failed.stderr
    assert "must be divisible by the number of processes (2)" in failed.stderr
