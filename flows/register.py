"""Flows `register` (the evaluated DCM student → a new registry version aliased `challenger`) and
`promote` (the champion gate), each with an MLflow run and a Prefect markdown artifact."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dcm.config import DEFAULT_PARAMS, config_to_dict, load_config
from dcm.io import read_json, write_json_atomic
from dcm.registry import promote, register_challenger, rollback
from dcm.tracking import git_state, stage_run

LINEAGE_STAGES = ("precompute", "distill_semantic", "distill_detail", "evaluate")


def dvc_lineage(root: Path) -> dict[str, str]:
    """DVC's hashes of the outputs this version was built from, read from dvc.lock."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = yaml.safe_load(lock.read_text()).get("stages", {})
    return {f"dvc.{stage}.{out['path']}": out.get("md5", "") for stage in LINEAGE_STAGES
            for out in stages.get(stage, {}).get("outs", [])}


@flow(name="register", log_prints=True)
def register_flow(params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict:
    cfg = load_config(params, overrides)
    root = Path.cwd()
    folder = Path(cfg.distill.out_dir) / "dcm"
    metrics = read_json(Path(cfg.evaluate.out_dir) / "metrics.json")
    with stage_run(cfg.tracking, "register", {"registry": config_to_dict(cfg.registry)}) as run:
        lineage = {"git_commit": git_state(root)["git_commit"], **dvc_lineage(root)}
        record = register_challenger(cfg, folder, metrics, lineage)
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
