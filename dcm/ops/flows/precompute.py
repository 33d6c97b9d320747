"""Flow `precompute`: latents, text embeddings and teacher trajectories for every shard."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dcm.config import DEFAULT_PARAMS, config_to_dict, load_config
from dcm.stages.precompute import run_precompute_stage
from dcm.ops.tracking import stage_run
from dcm.ops.flows.common import markdown_table


@flow(name="precompute", log_prints=True)
def precompute_flow(params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict:
    logger = get_run_logger()
    cfg = load_config(params, overrides)
    logged = {"precompute": config_to_dict(cfg.precompute), "schedule": config_to_dict(cfg.schedule)}
    with stage_run(cfg.tracking, "precompute", logged, system_metrics=True) as run:
        start = time.perf_counter()
        manifest = run_precompute_stage(cfg)
        seconds = time.perf_counter() - start
        if manifest is None:  # a non-zero rank: rank 0 reports
            return {"manifest": None, "run_id": run.run_id}
        metrics = {f"{split}_{key}": entry[key] for split, entry in manifest["splits"].items()
                   for key in ("samples", "trajectories")}
        metrics["seconds"] = seconds
        run.log_metrics(metrics)
        run.log_artifact(f"{cfg.precompute.dir}/manifest.json")
        create_markdown_artifact(markdown_table("Precompute", metrics, f"teacher {manifest['family']}"),
                                 key="precompute-report")
        logger.info("precompute: %s", metrics)
    return {"manifest": manifest, "run_id": run.run_id}


if __name__ == "__main__":
    precompute_flow()
