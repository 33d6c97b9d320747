"""Results made away from the tracking store, logged as MLflow runs of this project (`dcm import-runs`).

A GPU machine that cannot reach the project's MLflow store runs the stages with research/run_stages.py,
which writes per stage its final metrics and every logged step (`<stage>_metrics.json`, the teacher's
`teacher_metrics.json`, the evaluation's `eval_metrics.json`) with the overrides, the device and the resolved
configuration it ran (run.json holds the last call's). Importing one such folder opens one run per stage, as
the stage's own flow would have (and a research/run_matrix.py folder, one run per finished job of its plan,
named after the plan's run and seed): that configuration as params (resolved here from the overrides, and tagged
so, for older files without it), the logged steps and the final metrics under the flow's names, the pictures
and report as artifacts, tagged with where they came from. A result imported again adds nothing (runs carry
an import key: the stage and its file's content hash); a run cut off half-way is replaced.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from dcm.config import config_to_dict, load_config
from dcm.errors import StageError
from dcm.io import read_json, sha256_file, sha256_json
from dcm.ops.git import git_state
from dcm.ops.tracking import stage_run, tracking_uri
from dcm.stages.register import flatten_metrics

STAGE_FILES = {"teacher": "teacher_metrics.json", "semantic": "semantic_metrics.json", "detail": "detail_metrics.json",
               "lcm": "lcm_metrics.json", "pcm": "pcm_metrics.json", "single": "single_metrics.json",
               "evaluate": "eval_metrics.json"}
ARTIFACTS = {"teacher": ("teacher_samples.png",), "evaluate": ("eval_report.md", "eval_samples.png", "eval_quality.csv")}
IMPORT_KEY = "dcm.import_key"
UNKNOWN_SOURCE = "unknown (made away from this checkout before results recorded their commit; see dcm.imported_from)"


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


MATRIX = "matrix.json"  # research/run_matrix.py's record of a plan: every job, its overrides, curve and rows


def log_import(here, params: Path, key: str, stage: str, overrides: list[str], config: dict | None, final: dict,
               steps: list[dict], tags: dict[str, str], made_by: str | None, artifacts: list[Path] = ()) -> str:
    """One imported result as a run of the stage's kind: the configuration it ran (resolved here from its
    overrides when the result does not carry it) as params, every logged step, the final metrics. Its git_commit
    tag is the commit that made it (`made_by`, as the results record it), not the importing checkout's."""
    logged = {"overrides": " ".join(overrides), **(config or config_to_dict(load_config(params, overrides)))}
    root = params.resolve().parent
    with stage_run(here.tracking, stage, logged, root=root) as run:
        run.set_tags({IMPORT_KEY: key, "dcm.params_from": "the results" if config else "this checkout's params.yaml",
                      "git_commit": made_by or UNKNOWN_SOURCE,
                      "git_dirty": str(made_by.endswith("-dirty")) if made_by else "unknown",
                      "dcm.imported_by_commit": git_state(root)["git_commit"], **tags})
        for entry in steps:
            run.log_metrics({k: v for k, v in entry.items() if k != "step" and isinstance(v, (int, float))},
                            step=int(entry["step"]))
        run.log_metrics(final)
        for artifact in artifacts:
            run.log_artifact(artifact)
    return run.run_id


def already_imported(earlier: dict[str, list], key: str) -> bool:
    """True when a finished run carries `key`; runs an import killed half-way are deleted (replaced, not doubled)."""
    if any(run.info.status == "FINISHED" for run in earlier.get(key, [])):
        return True
    for broken in earlier.get(key, []):
        mlflow.delete_run(broken.info.run_id)
    return False


def import_stage_results(folder: Path, params: Path, here, earlier: dict[str, list]) -> list[str]:
    """research/run_stages.py's --out: one run per stage result file."""
    last_call = read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    lines = []
    for stage, name in STAGE_FILES.items():
        if not (folder / name).is_file():
            continue
        key = f"{stage}:{sha256_file(folder / name)[:16]}"
        if already_imported(earlier, key):
            lines.append(f"{stage}: already imported ({key})")
            continue
        record = read_json(folder / name)
        made = record.get("provenance") or {**last_call, **{k: record[k] for k in ("overrides", "device") if k in record}}
        final, steps = stage_metrics(stage, record)
        run_id = log_import(here, params, key, stage, list(made.get("overrides", [])), made.get("config"), final, steps,
                            {"dcm.imported_from": str(folder), "dcm.device": str(made.get("device", "unknown"))},
                            made.get("source_commit"), [folder / a for a in ARTIFACTS.get(stage, ()) if (folder / a).is_file()])
        lines.append(f"{stage}: imported as run {run_id} ({len(final)} metrics, {len(steps)} logged steps)")
    return lines


def import_matrix(folder: Path, params: Path, here, earlier: dict[str, list]) -> list[str]:
    """research/run_matrix.py's --out: one run per finished job, named after the plan's run and seed, with its
    training curve and its student's evaluation rows. Jobs another machine finished ("earlier") are left to
    that machine's matrix.json; the teacher's evaluation is in every student's rows."""
    lines = []
    for name, job in read_json(folder / MATRIX).items():
        if job.get("state") != "done" or job.get("stage") == "teacher" or not (job.get("metrics") or job.get("curve")):
            continue  # unfinished, the teacher's rows (in every student's), or nothing recorded (older plans' experts)
        key = f"matrix:{name}:{sha256_json(job)[:16]}"
        if already_imported(earlier, key):
            lines.append(f"{name}: already imported ({key})")
            continue
        rows = job.get("metrics", {})
        final = flatten_metrics(rows)
        tags = {"mlflow.runName": name, "dcm.imported_from": str(folder / MATRIX), "dcm.seed": str(job.get("seed")),
                "dcm.plan_run": str(job.get("run") or "shared semantic expert"),
                "dcm.device": str(rows.get("device", "unknown"))}
        run_id = log_import(here, params, key, job["stage"], list(job.get("overrides", [])), None, final,
                            job.get("curve", []), tags, job.get("source_commit"))
        lines.append(f"{name}: imported as run {run_id} ({len(final)} metrics, {len(job.get('curve', []))} logged steps)")
    return lines


def import_results(folder: Path, params: Path) -> list[str]:
    """Every result in `folder` as an MLflow run (see the module's note); returns one line per run."""
    folder = folder.resolve()
    kinds = [(folder / MATRIX).is_file(), (folder / "run.json").is_file() or (folder / "teacher_metrics.json").is_file()]
    if not any(kinds):
        raise StageError(f"{folder}: no run.json, teacher_metrics.json or {MATRIX}; import a folder "
                         "research/run_stages.py or research/run_matrix.py wrote (its --out)")
    here = load_config(params)  # this project's tracking store
    mlflow.set_tracking_uri(tracking_uri(here.tracking))
    earlier = earlier_imports(here.tracking.experiment)
    lines = import_matrix(folder, params, here, earlier) if kinds[0] else []
    lines += import_stage_results(folder, params, here, earlier) if kinds[1] else []
    if not lines:
        raise StageError(f"{folder}: no stage results ({', '.join(STAGE_FILES.values())}) and no finished job in "
                         f"{MATRIX}")
    return lines
