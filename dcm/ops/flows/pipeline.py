"""Flow `pipeline`: every DVC stage as its own Prefect task, in dvc.yaml's order, then promotion, under one
parent MLflow run that every stage's run nests under (DCM_PARENT_RUN_ID).

DVC stays the one source of truth for what re-runs: each task is `dvc repro --single-item <stage>`, which
skips a stage whose deps and params are unchanged. What Prefect adds is per-stage state in its UI, retries of
a stage that crashed (it resumes from its checkpoints), and a failed run that names the failed stage. Each
stage's own flow run carries the tag `pipeline-run:<id of this flow run>` (dcm/ops/env.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from dcm.config import DEFAULT_PARAMS, load_config
from dcm.errors import StageError
from dcm.ops.env import PIPELINE_RUN_ENV
from dcm.ops.flows.register import promote_flow
from dcm.ops.tracking import stage_run

TAIL_LINES = 40  # of dvc's output, quoted when a stage fails
CLEAR_ERROR = "dcm: "  # how the CLI starts its one-line errors (bad config, bad input): retrying cannot help


class StageFailed(StageError):
    def __init__(self, stage: str, lines: list[str]):
        self.stage, self.crashed = stage, not any(line.startswith(CLEAR_ERROR) for line in lines)
        super().__init__(f"stage {stage} failed (dvc repro --single-item {stage}):\n" + "\n".join(lines[-TAIL_LINES:]))


def dvc_command() -> str:
    """dvc from this interpreter's environment, so a worker needs no activated venv."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


def stage_order(root: Path) -> list[str]:
    """dvc.yaml's stages in the order it lists them: `dcm dvc-yaml` writes them in dependency order."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def retry_crashes(_task, _task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return not isinstance(error, StageFailed) or error.crashed


@task(task_run_name="{stage}", cache_policy=NO_CACHE)  # DVC decides what is up to date, not Prefect's cache
def reproduce_stage(stage: str, root: str, parent_run_id: str, pipeline_run_id: str) -> None:
    logger = get_run_logger()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "DCM_PARENT_RUN_ID": parent_run_id, PIPELINE_RUN_ENV: pipeline_run_id,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    lines: list[str] = []
    with subprocess.Popen([dvc_command(), "repro", "--single-item", stage], cwd=root, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            lines.append(line.rstrip())
            # The terminal sees dvc's progress as it happens (print would only reach Prefect's log, which the
            # CLI keeps at WARNING); the task run's log gets it too.
            sys.stdout.write(line)
            sys.stdout.flush()
            logger.info(line.rstrip())
    if process.returncode:
        raise StageFailed(stage, lines)


@flow(name="pipeline")
def pipeline_flow(params: str = str(DEFAULT_PARAMS), promote: bool = True) -> dict:
    params_path = Path(params).resolve()
    root = params_path.parent
    cfg = load_config(params_path)
    stage_task = reproduce_stage.with_options(retries=cfg.pipeline.retries, retry_delay_seconds=cfg.pipeline.retry_delay_s,
                                              retry_condition_fn=retry_crashes)
    with stage_run(cfg.tracking, "pipeline", {"params": str(params_path)}, root=root) as run:
        for stage in stage_order(root):
            stage_task(stage, str(root), run.run_id or "", str(flow_run.id or ""))
        promotion = promote_flow(str(params_path)) if promote else None
    return {"run_id": run.run_id, "promotion": promotion}


if __name__ == "__main__":
    pipeline_flow()
