"""Flow `reevaluate-champion` (nightly in prefect.yaml): the champion evaluated again and held to the gate
against its own recorded metrics. A regression fails the flow run (so Prefect's notifications fire) and is
recorded on the model version and in a markdown artifact."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dcm.config import DEFAULT_PARAMS, config_to_dict, load_config
from dcm.errors import StageError
from dcm.ops.registry import reevaluate_champion
from dcm.stages.register import flatten_metrics
from dcm.ops.tracking import stage_run


@flow(name="reevaluate-champion", log_prints=True)
def reevaluate_flow(params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict:
    cfg = load_config(params, overrides)
    with stage_run(cfg.tracking, "reevaluate", {"registry": config_to_dict(cfg.registry)}, system_metrics=True) as run:
        result = reevaluate_champion(cfg)
        run.log_metrics(flatten_metrics(result["metrics"]))
        run.set_tags({"dcm.reevaluated_version": str(result["version"]),
                      "dcm.regression": str(result["regression"]).lower()})
        for path in result["files"].values():
            run.log_artifact(path, "reevaluation")
    verdict = "REGRESSION" if result["regression"] else "no regression"
    title = f"Re-evaluation of {result['name']} version {result['version']} (champion): {verdict}"
    create_markdown_artifact("\n".join([f"# {title}", "", *[f"- {r}" for r in result["reasons"]]]),
                             key="champion-reevaluation")
    get_run_logger().info("%s", title)
    if result["regression"]:
        raise StageError(f"{title}: " + "; ".join(result["reasons"]))
    return {k: v for k, v in result.items() if k != "files"}


if __name__ == "__main__":
    reevaluate_flow()
