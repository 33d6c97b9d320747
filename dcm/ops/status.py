"""`dcm status`: what each stage has produced and where its latest MLflow run is."""

from __future__ import annotations

import mlflow

from dcm.config import DCMConfig
from dcm.io import read_json
from dcm.ops.registry import alias_version
from dcm.ops.tracking import tracking_uri
from dcm.stages.paths import latents_manifest, shard_manifest, student_metrics_file, teacher_manifest
from dcm.stages.register import CHALLENGER, CHAMPION, model_name


def _latest_runs(cfg: DCMConfig) -> dict[str, str]:
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


def _shards_line(manifest: dict) -> str:
    counts = ", ".join(f"{split} {entry['samples']} clips in {len(entry['shards'])} shards"
                       for split, entry in manifest["splits"].items())
    return f"{counts}; {len(manifest['skipped'])} inputs skipped"


def _teacher_line(manifest: dict) -> str:
    metrics = manifest.get("metrics", {})
    if "steps" not in manifest:  # a real teacher: recorded, not trained
        return f"{manifest['family']} teacher at {manifest['path']}"
    if "judge_overall" in metrics:
        return f"{manifest['family']}, {manifest['steps']} steps, judge overall {metrics['judge_overall']:.3f} on held-out prompts"
    distance = f", MMD² to held-out clips {metrics['mmd_vs_real']:.3f}" if "mmd_vs_real" in metrics else ""
    return f"{manifest['family']}, {manifest['steps']} steps, final loss {metrics['final_loss']:.4f}{distance}"


def _latents_line(manifest: dict) -> str:
    return ", ".join(f"{split} {e['samples']} samples ({e['trajectories']} with trajectories)"
                     for split, e in manifest["splits"].items())


def _student_line(metrics: dict) -> str:
    judge = metrics.get("judge_overall")
    score = f", judge overall {judge:.3f} at {metrics['sample_steps']} steps" if judge is not None else ""
    return f"{metrics['steps']} training steps{score}"


def _registry_line(cfg: DCMConfig) -> str:
    name = model_name(cfg)
    versions = {alias: alias_version(cfg, alias) for alias in (CHAMPION, CHALLENGER)}
    if not any(versions.values()):
        return f"{name}: no registered version yet"
    return f"{name}: " + ", ".join(f"{alias} version {v}" for alias, v in versions.items() if v)


def describe(cfg: DCMConfig) -> str:
    students = [(name, student_metrics_file(cfg, name), _student_line)
                for name in ["semantic", "dcm", *cfg.distill.baselines]]
    stages = (("shard", shard_manifest(cfg), _shards_line), ("teacher", teacher_manifest(cfg), _teacher_line),
              ("latents", latents_manifest(cfg), _latents_line), *students)
    lines = []
    for name, path, summarise in stages:
        summary = summarise(read_json(path)) if path.is_file() else f"not run yet ({path} missing)"
        lines.append(f"{name:<9} {path.parent}: {summary}")
    lines.append(f"registry  {_registry_line(cfg)}")
    runs = _latest_runs(cfg)
    uri = tracking_uri(cfg.tracking)
    lines.append(f"MLflow    {uri} (browse: mlflow ui --backend-store-uri {uri})")
    lines += [f"  latest {stage} run: {run}" for stage, run in sorted(runs.items())]
    return "\n".join(lines)
