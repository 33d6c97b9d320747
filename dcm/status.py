"""`dcm status`: what each stage has produced and where its latest MLflow run is."""

from __future__ import annotations

from pathlib import Path

from dcm.config import DCMConfig
from dcm.data.sharding import MANIFEST
from dcm.io import read_json
from dcm.tracking import tracking_uri


def _latest_runs(cfg: DCMConfig) -> dict[str, str]:
    import mlflow
    mlflow.set_tracking_uri(tracking_uri(cfg.tracking))
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return {}
    runs = mlflow.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              output_format="list")
    latest: dict[str, str] = {}
    for run in runs:
        latest.setdefault(run.data.tags.get("dcm.stage", "?"), f"{run.info.run_id} ({run.info.status})")
    return latest


def describe(cfg: DCMConfig) -> str:
    lines = []
    shards = Path(cfg.shard.dir) / MANIFEST
    if shards.is_file():
        manifest = read_json(shards)
        counts = ", ".join(f"{split} {entry['samples']} clips in {len(entry['shards'])} shards"
                           for split, entry in manifest["splits"].items())
        lines.append(f"shard     {cfg.shard.dir}: {counts}; {len(manifest['skipped'])} inputs skipped")
    else:
        lines.append(f"shard     not run yet ({shards} missing)")
    runs = _latest_runs(cfg)
    uri = tracking_uri(cfg.tracking)
    lines.append(f"MLflow    {uri} (browse: mlflow ui --backend-store-uri {uri})")
    lines += [f"  latest {stage} run: {run}" for stage, run in sorted(runs.items())]
    return "\n".join(lines)
