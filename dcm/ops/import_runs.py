"""Results made away from the tracking store, logged as MLflow runs of this project (`dcm import-runs`).

A GPU machine that cannot reach the project's MLflow store runs the stages with research/run_stages.py,
which writes per stage its final metrics and every logged step (`<stage>_metrics.json`, the teacher's
`teacher_metrics.json`, the evaluation's `eval_metrics.json`) with the overrides, the device and the resolved
configuration it ran (run.json holds the last call's). Importing one such folder opens one run per stage, as
the stage's own flow would have: that configuration as params (resolved here from the overrides, and tagged
so, for older files without it), the logged steps and the final metrics under the flow's names, the pictures
and report as artifacts, tagged with where they came from. A result imported again adds nothing (runs carry
an import key: the stage and its file's content hash); a run cut off half-way is replaced.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from dcm.config import config_to_dict, load_config
from dcm.errors import StageError
from dcm.io import read_json, sha256_file
from dcm.ops.tracking import stage_run, tracking_uri
from dcm.stages.register import flatten_metrics

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
    if stage == "evaluate":  # {row: {metric: value}}: named as the evaluate flow names them
        return flatten_metrics(record), []
    return flatten_metrics(record.get("metrics", {})), record.get("curve", [])


def import_results(folder: Path, params: Path) -> list[str]:
    """Every stage result in `folder` as an MLflow run (see the module's note); returns one line per stage."""
    folder = folder.resolve()
    if not (folder / "run.json").is_file() and not (folder / "teacher_metrics.json").is_file():
        raise StageError(f"{folder}: no run.json or teacher_metrics.json; import a folder research/run_stages.py "
                         "wrote (its --out)")
    last_call = read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    here = load_config(params)  # this project's tracking store
    mlflow.set_tracking_uri(tracking_uri(here.tracking))
    earlier, lines = earlier_imports(here.tracking.experiment), []
    for stage, name in STAGE_FILES.items():
        if not (folder / name).is_file():
            continue
        key = f"{stage}:{sha256_file(folder / name)[:16]}"
        if any(run.info.status == "FINISHED" for run in earlier.get(key, [])):
            lines.append(f"{stage}: already imported ({key})")
            continue
        for broken in earlier.get(key, []):  # an import killed half-way: replaced, not doubled
            mlflow.delete_run(broken.info.run_id)
        record = read_json(folder / name)
        made = record.get("provenance") or {**last_call, **{k: record[k] for k in ("overrides", "device") if k in record}}
        overrides = list(made.get("overrides", []))
        config = made.get("config") or config_to_dict(load_config(params, overrides))
        final, steps = stage_metrics(stage, record)
        logged = {"overrides": " ".join(overrides), **config}
        with stage_run(here.tracking, stage, logged, root=params.resolve().parent) as run:
            run.set_tags({IMPORT_KEY: key, "dcm.imported_from": str(folder), "dcm.device": str(made.get("device", "unknown")),
                          "dcm.params_from": "the results" if made.get("config") else "this checkout's params.yaml"})
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
