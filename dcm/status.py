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
    teacher = Path(cfg.teacher.out_dir) / "manifest.json"
    if teacher.is_file():
        manifest = read_json(teacher)
        judge = manifest.get("metrics", {}).get("judge_overall")
        where = cfg.teacher.out_dir + "/model" if manifest["family"] == "toy" else manifest["path"]
        lines.append(f"teacher   {where}: {manifest['family']}"
                     + (f", {manifest['steps']} steps, judge overall {judge:.3f} on held-out prompts"
                        if judge is not None else ""))
    else:
        lines.append(f"teacher   not run yet ({teacher} missing)")
    latents = Path(cfg.precompute.dir) / "manifest.json"
    if latents.is_file():
        manifest = read_json(latents)
        counts = ", ".join(f"{split} {e['samples']} samples ({e['trajectories']} with trajectories)"
                           for split, e in manifest["splits"].items())
        lines.append(f"latents   {cfg.precompute.dir}: {counts}")
    else:
        lines.append(f"latents   not run yet ({latents} missing)")
    runs = _latest_runs(cfg)
    uri = tracking_uri(cfg.tracking)
    lines.append(f"MLflow    {uri} (browse: mlflow ui --backend-store-uri {uri})")
    lines += [f"  latest {stage} run: {run}" for stage, run in sorted(runs.items())]
    return "\n".join(lines)
