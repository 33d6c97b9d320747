"""Flow `evaluate`: teacher vs students on the same noise; metrics, report, charts and samples to MLflow."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dcm.config import DEFAULT_PARAMS, config_to_dict, load_config
from dcm.stages.evaluate import run_evaluate_stage
from dcm.stages.register import flatten_metrics
from dcm.ops.tracking import stage_run


@flow(name="evaluate", log_prints=True)
def evaluate_flow(params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict:
    logger = get_run_logger()
    cfg = load_config(params, overrides)
    logged = {"evaluate": config_to_dict(cfg.evaluate), "sampling": config_to_dict(cfg.teacher.sampling)}
    with stage_run(cfg.tracking, "evaluate", logged, system_metrics=True) as run:
        result = run_evaluate_stage(cfg, on_result=lambda name, row: logger.info("%s: %s", name, row))
        run.log_metrics(flatten_metrics(result["metrics"]))
        for path in result["files"].values():
            run.log_artifact(path, "evaluation")
        create_markdown_artifact(result["files"]["report"].read_text(), key="evaluation-report")
    return {"metrics": result["metrics"], "run_id": run.run_id, "files": {k: str(v) for k, v in result["files"].items()}}


if __name__ == "__main__":
    evaluate_flow()
