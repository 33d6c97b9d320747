"""A fresh copy of this repository as its own git + DVC project, and tools run inside it the way a user
runs them (each in its own process, with the project's own homes for Prefect, MLflow and vbench)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from dcm.config import parse_override
from tests.conftest import REPO, TINY_DISTILL, TINY_TEACHER

BIN = Path(sys.executable).parent
STAGES = ("shard", "teacher", "precompute", "distill_semantic", "distill_detail", "evaluate", "register")
SMALL = ["data.shapes.train_samples=40", "data.shapes.val_samples=8", "shard.samples_per_shard=16",
         "registry.min_speedup=0.0", "evaluate.latency_repeats=1", "pipeline.retry_delay_s=0"]  # tiny models on a shared CPU: latency is noise (the gate has its own tests)
SKIPPED = ("data/", "results/", "research/")
GIT = ["git", "-c", "user.name=dcm-test", "-c", "user.email=dcm-test@example.invalid"]


def copy_project(root: Path) -> Path:
    """The repo's tracked and untracked-but-not-ignored files, with a `tiny` profile selected in params.yaml:
    the pipeline as shipped, only smaller. Never data/ (outputs of this checkout) nor the files the research
    harness and RESULTS.md keep (results/, research/): no stage reads them."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(SKIPPED):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profiles"]["tiny"] = dict(parse_override(o) for o in SMALL + TINY_TEACHER + TINY_DISTILL)
    params["profile"] = "tiny"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def run_in(root: Path, tool: str, *args: str, env: dict[str, str] | None = None,
           timeout: float | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    full.pop("MLFLOW_TRACKING_URI", None)
    for key in ("PREFECT_HOME", "VBENCH_CACHE_DIR"):
        if key not in (env or {}):
            full.pop(key, None)  # the copy gets its own project-local homes, as a fresh clone would
    return subprocess.run([str(BIN / tool), *args], cwd=root, env=full, capture_output=True, text=True,
                          timeout=timeout)


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_in(root, "dvc", *args)


def commit_all(root: Path, message: str) -> None:
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=root, check=True)


def stage_runs(root: Path, stage: str) -> int:
    """MLflow runs of one stage in the project's tracking database."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return db.execute("select count(*) from tags where key = 'dcm.stage' and value = ?", (stage,)).fetchone()[0]


def parents(root: Path) -> set[str]:
    """The parent run of every stage run (mlflow.parentRunId tags)."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return {row[0] for row in db.execute("select value from tags where key = 'mlflow.parentRunId'")}
