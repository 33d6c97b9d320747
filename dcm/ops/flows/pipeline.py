"""Flow `pipeline`: `dvc repro` (the DAG in dvc.yaml stays the one source of truth), then promotion,
under one parent MLflow run that every stage's run nests under (DCM_PARENT_RUN_ID)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from dcm.config import DEFAULT_PARAMS, load_config
from dcm.errors import StageError
from dcm.ops.flows.register import promote_flow
from dcm.ops.tracking import stage_run

TAIL_LINES = 40  # of dvc's output, quoted when it fails


def dvc_command() -> str:
    """dvc from this interpreter's environment, so a worker needs no activated venv."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


@flow(name="pipeline")
def pipeline_flow(params: str = str(DEFAULT_PARAMS), promote: bool = True) -> dict:
    params_path = Path(params).resolve()
    root = params_path.parent
    cfg = load_config(params_path)
    logger = get_run_logger()
    with stage_run(cfg.tracking, "pipeline", {"params": str(params_path)}, root=root) as run:
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "DCM_PARENT_RUN_ID": run.run_id or "", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        lines: list[str] = []
        with subprocess.Popen([dvc_command(), "repro"], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as process:
            for line in process.stdout:
                lines.append(line.rstrip())
                # The terminal sees dvc's progress as it happens (print would only reach Prefect's log,
                # which the CLI keeps at WARNING); the flow run's log gets it too.
                sys.stdout.write(line)
                sys.stdout.flush()
                logger.info(line.rstrip())
        if process.returncode:
            raise StageError("dvc repro failed:\n" + "\n".join(lines[-TAIL_LINES:]))
        promotion = promote_flow(str(params_path)) if promote else None
    return {"run_id": run.run_id, "promotion": promotion}


if __name__ == "__main__":
    pipeline_flow()
