"""Failures of services: an unreachable MLflow server or Prefect API fails within seconds with a clear
message, and a registration that fails halfway leaves no version behind."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcm.errors import StageError
from dcm.ops.registry import register_challenger
from dcm.stages.register import model_name
from dcm.ops.tracking import stage_run
from dcm.stages.distill import run_distill_stage
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:  # bound, then released: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_mlflow_server_fails_within_seconds(config):
    cfg = config(f"tracking.uri=http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(StageError, match=r"MLflow tracking server at http://127\.0\.0\.1:\d+/health is unreachable"):
        with stage_run(cfg.tracking, "teacher", {}):
            pass
    assert time.monotonic() - start < 2 * cfg.tracking.probe_timeout_s


def test_unreachable_prefect_api_fails_the_command_within_seconds(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{closed_port()}/api"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dcm.ops.cli", "status"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and time.monotonic() - start < 60  # interpreter start-up included
    assert "Prefect API (PREFECT_API_URL)" in result.stderr and "unreachable" in result.stderr
    assert "make server" in result.stderr


def test_a_registration_that_fails_halfway_leaves_no_version(config):
    import mlflow
    cfg = config()
    run_distill_stage(cfg, "semantic")
    run_distill_stage(cfg, "detail")
    with stage_run(cfg.tracking, "register", {}), pytest.raises(mlflow.exceptions.MlflowException, match="250"):
        register_challenger(cfg, Path(cfg.distill.out_dir) / "dcm", {"dcm_4": {"judge_overall": 0.5}},
                            {"x" * 300: "a lineage key MLflow refuses"})
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    assert client.search_model_versions(f"name = '{model_name(cfg)}'") == []
