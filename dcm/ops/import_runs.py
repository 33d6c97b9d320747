"""Results made away from the tracking store, logged as MLflow runs of this project (`dcm import-runs`).

A GPU machine that cannot reach the project's MLflow store runs the stages with research/run_stages.py,
which writes per stage its final metrics and every logged step (`<stage>_metrics.json`, the teacher's
`teacher_metrics.json`, the evaluation's `eval_metrics.json`) and, in run.json, the overrides and the
device. Importing one such folder opens one run per stage, as the stage's own flow would have: the
resolved configuration as params, the logged steps and the final metrics, the pictures and report as
artifacts, tagged with where they came from. A folder imported again adds nothing (runs carry an import
key); a run cut off half-way is replaced.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from dcm.config import config_to_dict, load_config
from dcm.errors import StageError
from dcm.io import read_json
from dcm.ops.tracking import stage_run, tracking_uri

STAGE_FILES = {"teacher": "teacher_metrics.json", "semantic": "semantic_metrics.json", "detail": "detail_metrics.json",
               "lcm": "lcm_metrics.json", "pcm": "pcm_metrics.json", "single": "single_metrics.json",
               "evaluate": "eval_metrics.json"}
ARTIFACTS = {"teacher": ("teacher_samples.png",), "evaluate": ("eval_report.md", "eval_samples.png", "eval_quality.csv")}
IMPORT_KEY = "dcm.import_key"


def earlier_imports(experiment: str) -> dict[str, list]:
    """Import key → the runs already imported into `experiment` under it."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = mlflow.search_runs([found.experiment_id], filter_string=f"tags.`{IMPORT_KEY}` != ''", output_format="list")
    keyed: dict[str, list] = {}
    for run in runs:
        keyed.setdefault(run.data.tags[IMPORT_KEY], []).append(run)
    return keyed


def stage_metrics(stage: str, record: dict) -> tuple[dict[str, float], list[dict]]:
    """(final metrics, logged steps) of one stage's results file."""
    if stage == "evaluate":  # {row: {metric: value}}, a few scalars beside
        final = {f"{row}/{key}": value for row, values in record.items() if isinstance(values, dict)
                 for key, value in values.items() if isinstance(value, (int, float))}
        return final | {k: v for k, v in record.items() if isinstance(v, (int, float))}, []
    final = {k: v for k, v in record.get("metrics", {}).items() if isinstance(v, (int, float))}
    return final, record.get("curve", [])


def import_results(folder: Path, params: Path) -> list[str]:
    """Every stage result in `folder` as an MLflow run (see the module's note); returns one line per stage."""
    folder = folder.resolve()
    if not (folder / "run.json").is_file() and not (folder / "teacher_metrics.json").is_file():
        raise StageError(f"{folder}: no run.json or teacher_metrics.json; import a folder research/run_stages.py "
                         "wrote (its --out)")
    run_info = read_json(folder / "run.json") if (folder / "run.json").is_file() else read_json(folder / "teacher_metrics.json")
    overrides = list(run_info.get("overrides", []))
    cfg = load_config(params, overrides)
    mlflow.set_tracking_uri(tracking_uri(cfg.tracking))
    earlier, lines = earlier_imports(cfg.tracking.experiment), []
    for stage, name in STAGE_FILES.items():
        if not (folder / name).is_file():
            continue
        key = f"{folder.name}/{stage}"
        if any(run.info.status == "FINISHED" for run in earlier.get(key, [])):
            lines.append(f"{stage}: already imported ({key})")
            continue
        for broken in earlier.get(key, []):  # an import killed half-way: replaced, not doubled
            mlflow.delete_run(broken.info.run_id)
        final, steps = stage_metrics(stage, read_json(folder / name))
        logged = {"overrides": " ".join(overrides), **config_to_dict(cfg)}
        with stage_run(cfg.tracking, stage, logged, root=params.resolve().parent) as run:
            run.set_tags({IMPORT_KEY: key, "dcm.imported_from": str(folder),
                          "dcm.device": str(run_info.get("device", "unknown"))})
            for entry in steps:
                run.log_metrics({k: v for k, v in entry.items() if k != "step" and isinstance(v, (int, float))},
                                step=int(entry["step"]))
            run.log_metrics(final)
            for artifact in ARTIFACTS.get(stage, ()):
                if (folder / artifact).is_file():
                    run.log_artifact(folder / artifact)
        lines.append(f"{stage}: imported as run {run.run_id} ({len(final)} metrics, {len(steps)} logged steps)")
    if not lines:
        raise StageError(f"{folder}: no stage results ({', '.join(STAGE_FILES.values())})")
    return lines
