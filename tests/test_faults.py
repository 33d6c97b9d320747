"""Fault injection: `dvc repro` killed with SIGKILL inside each stage in turn, then run again until it
completes. Nothing may be lost: the finished pipeline's deterministic outputs are byte-identical to an
uninterrupted run's (the same stage functions, called in this process), and each training stage's loss curve
is the uninterrupted one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from dcm.config import load_config, parse_override
from dcm.io import read_json, sha256_file
from dcm.stages.distill import run_distill_stage
from dcm.stages.evaluate import run_evaluate_stage
from dcm.stages.precompute import run_precompute_stage
from dcm.stages.shard import run_shard_stage
from dcm.stages.teacher import run_teacher_stage
from dcm.train.checkpoint import latest_checkpoint
from tests.project import BIN, copy_project, run_in

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

# More work per stage than the tiny profile, so that a kill lands after a stage has saved some of it and
# before it is done: 20 shards (a kill after at most half of them: a test process starved of CPU by another
# one running beside it still lands in time), 24 teacher steps and 16 of each expert, checkpoints every 4,
# 4 student rows.
LONGER = ["shard.samples_per_shard=2", "precompute.batch_size=2", "teacher.toy.train.steps=24",
          "teacher.toy.train.checkpoint_every=4", "evaluate.student_steps=[1,2,4,8]"]
for _part in ("semantic", "detail"):
    LONGER += [f"distill.{_part}.steps=16", f"distill.{_part}.checkpoint_every=4"]

def finished(pattern: str):
    """Progress as the number of finished outputs (a shard's sidecar, an evaluation row) on disk."""
    return lambda project: len(list(project.glob(pattern)))


def checkpointed(folder: str):
    """Progress as the step of the newest complete checkpoint."""
    return lambda project: max((int(p.parent.name.removeprefix("step-")) for p in
                                (project / folder).glob("step-*/state.json")), default=0)


# stage → (its progress, the progress values a kill may follow, the file it writes last). Each range
# leaves work after the kill: 20 train shards, 24 teacher and 16 expert steps, 5 evaluation rows.
PROGRESS = {
    "shard": (finished("data/shards/train/*.json"), range(1, 11), "data/shards/manifest.json"),
    "teacher": (checkpointed("data/checkpoints/teacher"), range(4, 20, 4), "data/teacher/manifest.json"),
    "precompute": (finished("data/latents/train/*.json"), range(1, 11), "data/latents/manifest.json"),
    "distill_semantic": (checkpointed("data/checkpoints/semantic"), range(4, 12, 4), "data/students/semantic.json"),
    "distill_detail": (checkpointed("data/checkpoints/detail"), range(4, 12, 4), "data/students/dcm.json"),
    "evaluate": (finished("data/eval/rows/*.json"), range(1, 4), "data/eval/metrics.json"),
}
TRAINING = {"teacher": "data/checkpoints/teacher", "distill_semantic": "data/checkpoints/semantic",
            "distill_detail": "data/checkpoints/detail"}
DETERMINISTIC = ("shard", "teacher", "precompute", "distill_semantic", "distill_detail")
JITTER_S = 0.05  # and up to this long after that point
STAGE_TIMEOUT_S = 600


def longer_project(root: Path) -> Path:
    project = copy_project(root)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["tiny"].update(dict(parse_override(o) for o in LONGER))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def repro_killed_in(project: Path, stage: str, point: int, jitter_s: float, log: Path) -> None:
    """Start `dvc repro`; SIGKILL its whole process group once `stage`'s progress reaches `point`."""
    progress, _, last = PROGRESS[stage]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_HOME", "VBENCH_CACHE_DIR"):
        env.pop(key, None)
    with open(log, "w") as out:
        process = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=project, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    try:
        while progress(project) < point:
            assert process.poll() is None, f"dvc repro ended before {stage} reached {point}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{stage} did not reach {point} within {STAGE_TIMEOUT_S} s"
            time.sleep(0.005)
        time.sleep(jitter_s)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (project / last).exists(), f"the kill came after {stage} had finished: it tested nothing"


def locked_paths(project: Path, stages) -> list[str]:
    """The outputs of `stages` (checkpoints and metrics included) as dvc.lock lists them."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return [out["path"] for stage in stages for out in lock[stage]["outs"]]


def file_hashes(project: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of every file under each path (a file or a folder), by its path in the project."""
    files = [p for path in paths for p in ([project / path] if (project / path).is_file()
                                           else sorted((project / path).rglob("*"))) if p.is_file()]
    return {str(p.relative_to(project)): sha256_file(p) for p in files}


def run_uninterrupted(project: Path, monkeypatch) -> None:
    """The reference: the stage functions `dvc repro`'s commands run, in order, in this process (no stage
    process to start, no Prefect or MLflow run around them: neither writes a stage output)."""
    monkeypatch.chdir(project)  # params.yaml's paths are relative to the project, as for dvc
    cfg = load_config(project / "params.yaml")
    run_shard_stage(cfg)
    run_teacher_stage(cfg)
    run_precompute_stage(cfg)
    run_distill_stage(cfg, "semantic")
    run_distill_stage(cfg, "detail")
    run_evaluate_stage(cfg)


def losses(project: Path, folder: str) -> list[float]:
    return read_json(latest_checkpoint(project / folder) / "state.json")["losses"]


def test_sigkill_in_every_stage_then_dvc_repro_loses_nothing(tmp_path, monkeypatch):
    seed = int(os.environ.get("DCM_FAULT_SEED", random.randrange(1_000_000)))  # new kill points each run
    print(f"kill points drawn with DCM_FAULT_SEED={seed} (set it to repeat them)")  # shown on failure
    rng = random.Random(seed)
    killed = longer_project(tmp_path / "killed")
    delays = {}
    for stage, (_, points, _) in PROGRESS.items():  # stage → (progress point, jitter)
        delays[stage] = (rng.choice(points), round(rng.uniform(0, JITTER_S), 3))
        repro_killed_in(killed, stage, *delays[stage], tmp_path / f"{stage}.log")
    completed = run_in(killed, "dvc", "repro")
    assert completed.returncode == 0, f"killed at {delays}:\n{completed.stdout}{completed.stderr}"
    assert read_json(killed / "data" / "registry" / "challenger.json")["version"] >= 1

    reference = longer_project(tmp_path / "reference")
    run_uninterrupted(reference, monkeypatch)

    paths = locked_paths(killed, DETERMINISTIC)
    assert paths and file_hashes(killed, paths) == file_hashes(reference, paths), f"killed at {delays}"
    for stage, folder in TRAINING.items():
        assert losses(killed, folder) == losses(reference, folder), f"{stage} (killed at {delays})"
    assert read_json(killed / "data" / "eval" / "metrics.json").keys() == \
        read_json(reference / "data" / "eval" / "metrics.json").keys()
