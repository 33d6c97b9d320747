"""MLflow: one run per stage execution at the configured tracking URI, logged from rank 0 only.

The embedded default is a SQLite file and an artifact folder inside the project, so `mlflow ui
--backend-store-uri sqlite:///mlflow.db` shows every run with no server to set up.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
from prefect.runtime import flow_run

from dcm.config import TrackingConfig, flatten
from dcm.ops.git import git_state
from dcm.ops.services import check_reachable, is_http

MLFLOW_PARAM_CHARS = 6000  # MLflow refuses longer param values
# The user's MLFLOW_TRACKING_URI as the process started: mlflow.set_tracking_uri() writes that variable
# itself, so reading it later would return whatever this process set last, not what the user chose.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(cfg: TrackingConfig) -> str:
    return USER_TRACKING_URI or cfg.uri



def lineage_tags() -> dict[str, str]:
    """Links from the MLflow run to what started it: the Prefect flow run, and the DVC experiment when
    `dvc exp run` runs the stage (DVC names it in the stage's environment)."""
    tags = {"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name,
            "dvc.experiment": os.environ.get("DVC_EXP_NAME"), "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV")}
    return {key: str(value) for key, value in tags.items() if value}


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class StageRun:
    """Thin handle over an active MLflow run; every call is a no-op off rank 0."""

    def __init__(self, run_id: str | None, stage: str):
        self.run_id, self.stage = run_id, stage

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run_id:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.run_id:
            mlflow.log_artifact(str(path), artifact_path=folder)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """One image per step under `key`: MLflow's UI shows them with a step slider."""
        if self.run_id:
            mlflow.log_image(image, key=key, step=step, synchronous=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id:
            mlflow.set_tags(tags)


def _experiment_id(cfg: TrackingConfig, root: Path) -> str:
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = Path(cfg.artifacts)
    location = (artifacts if artifacts.is_absolute() else root / artifacts).resolve().as_uri()
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


@contextmanager
def stage_run(cfg: TrackingConfig, stage: str, params: dict, root: Path | None = None,
              system_metrics: bool = False) -> Iterator[StageRun]:
    """Open the stage's run (nested under DCM_PARENT_RUN_ID when a pipeline run set it); training
    stages also record CPU/GPU/memory use (MLflow system metrics)."""
    if not is_rank_zero():
        yield StageRun(None, stage)
        return
    root = Path(root or Path.cwd()).resolve()
    uri = tracking_uri(cfg)
    if is_http(uri):
        check_reachable(f"{uri.rstrip('/')}/health", "the MLflow tracking server",
                        "start it, or point tracking.uri / MLFLOW_TRACKING_URI at a running one", cfg.probe_timeout_s)
    mlflow.set_tracking_uri(uri)
    parent = os.environ.get("DCM_PARENT_RUN_ID") or None
    with mlflow.start_run(experiment_id=_experiment_id(cfg, root), run_name=stage, parent_run_id=parent,
                          nested=parent is not None, tags={"dcm.stage": stage, **git_state(root), **lineage_tags()},
                          log_system_metrics=system_metrics) as run:
        mlflow.log_params({k: str(v)[:MLFLOW_PARAM_CHARS] for k, v in flatten(params).items()})
        yield StageRun(run.info.run_id, stage)
