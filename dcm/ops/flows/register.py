"""Flows `register` (the evaluated DCM student → a new registry version aliased `challenger`) and
`promote` (the champion gate), each with an MLflow run and a Prefect markdown artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dcm.config import DEFAULT_PARAMS, config_to_dict, load_config
from dcm.io import write_json_atomic
from dcm.ops.git import git_state
from dcm.ops.registry import promote, register_challenger, rollback
from dcm.ops.tracking import stage_run
from dcm.stages.register import dvc_lineage, run_register_stage


@flow(name="register", log_prints=True)
def register_flow(params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict:
    cfg = load_config(params, overrides)
    root = Path.cwd()
    registration = run_register_stage(cfg)
    with stage_run(cfg.tracking, "register", {"registry": config_to_dict(cfg.registry)}) as run:
        lineage = {"git_commit": git_state(root)["git_commit"], **dvc_lineage(root)}
        record = register_challenger(cfg, registration.folder, registration.metrics, lineage)
        run.set_tags({"dcm.registered_version": str(record["version"])})
        write_json_atomic(Path(cfg.registry.out), {**record, "run_id": run.run_id})
        get_run_logger().info("registered %s version %s as challenger", record["name"], record["version"])
    return record


@flow(name="promote", log_prints=True)
def promote_flow(params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None,
                 rollback_to: int | None = None) -> dict:
    cfg = load_config(params, overrides)
    result = rollback(cfg, rollback_to) if rollback_to is not None else promote(cfg)
    if rollback_to is not None:
        title, lines = f"Rollback of {result['name']}", [f"champion: version {result['previous']} → {rollback_to}"]
    else:
        verdict = "promoted to champion" if result["promoted"] else "not promoted"
        title = f"Promotion of {result['name']} version {result['challenger']}: {verdict}"
        lines = [f"- {reason}" for reason in result["reasons"]] + ["", f"champion is version {result['champion']}"]
    create_markdown_artifact("\n".join([f"# {title}", "", *lines]), key="promotion")
    get_run_logger().info("%s", title)
    return result
