"""Integration: the shard flow through Prefect (the session's server) and `dvc repro` in a copy of the repo."""

import csv
import hashlib
import io
import json
import os
import subprocess
import urllib.request

import mlflow
import pytest
import yaml

from dcm.stages.shard import run_shard_stage
from dcm.io import read_json
from dcm.ops.flows.shard import run as run_shard_flow
from tests.conftest import REPO
from tests.project import STAGES, commit_all, copy_project, dvc, parents, run_in, stage_runs

pytestmark = pytest.mark.integration


def test_flow_with_parallel_workers_matches_a_serial_run(tmp_path, make_config, prefect_api):
    overrides = [f"shard.dir={tmp_path / 'flow'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
                 f"tracking.artifacts={tmp_path / 'art'}", "data.shapes.train_samples=40",
                 "data.shapes.val_samples=8", "shard.samples_per_shard=8", "shard.workers=2"]
    result = run_shard_flow(str(REPO / "params.yaml"), overrides)
    serial = run_shard_stage(make_config("data.shapes.train_samples=40", "shard.samples_per_shard=8"))
    assert result["manifest"]["splits"] == serial["splits"]
    assert result["metrics"]["clips_written"] == 48 and result["run_id"]


def test_dask_engine_writes_the_same_shards_in_worker_processes(tmp_path, make_config, prefect_api):
    overrides = [f"shard.dir={tmp_path / 'dask'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
                 f"tracking.artifacts={tmp_path / 'art'}", "data.shapes.train_samples=40",
                 "data.shapes.val_samples=8", "shard.samples_per_shard=8", "shard.workers=2", "shard.engine=dask"]
    before = dict(os.environ)
    result = run_shard_flow(str(REPO / "params.yaml"), overrides)
    serial = run_shard_stage(make_config("data.shapes.train_samples=40", "shard.samples_per_shard=8"))
    assert result["manifest"]["splits"] == serial["splits"]  # same bytes (sha256 per shard)
    assert dict(os.environ) == before  # Dask's OMP/MKL_NUM_THREADS=1 does not leak into this process


@pytest.fixture
def project(tmp_path, prefect_api):
    """A copy of the repo whose stage commands report to the session's Prefect server."""
    return copy_project(tmp_path / "project")


def prefect_post(url: str, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def flow_runs(url: str, flow: str, project) -> list[dict]:
    """The project's runs of `flow` on the Prefect server, oldest first."""
    runs = prefect_post(url, "/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}, "sort": "START_TIME_ASC"})
    return [run for run in runs if str(project) in json.dumps(run["parameters"])]


def stage_tasks(url: str, pipeline_run: dict) -> list[tuple[str, str, int]]:
    """(stage, state, run count) of each task of a pipeline flow run, in the order they started."""
    tasks = prefect_post(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [pipeline_run["id"]]}},
                                                    "sort": "EXPECTED_START_TIME_ASC"})
    return [(t["name"], t["state_type"], t["run_count"]) for t in tasks]


def flow_run_logs(url: str, flow: str, project) -> list[str]:
    """The log lines of the project's runs of `flow`, read back through the Prefect API."""
    ours = [run["id"] for run in flow_runs(url, flow, project)]
    assert ours, f"no {flow} flow run of {project} on the server"
    logs = prefect_post(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": ours}}, "limit": 200})
    return [entry["message"] for entry in logs]


def test_dvc_repro_runs_once_then_only_when_a_param_changes(project, prefect_api):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["tiny"]["distill.sample_every"] = 2  # samples during training, logged to MLflow
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = run_in(project, "dcm", "pipeline")  # dvc repro + promotion under one parent run
    assert first.returncode == 0, first.stdout + first.stderr
    assert "dcm-toy version 1: promoted to champion" in first.stdout
    assert [stage_runs(project, "pipeline")] == [1] and len(parents(project)) == 1  # every stage nested under it
    manifest = read_json(project / "data" / "shards" / "manifest.json")
    assert manifest["splits"]["train"]["samples"] == 40
    assert read_json(project / "data" / "latents" / "manifest.json")["splits"]["train"]["samples"] == 40
    assert (project / "data" / "teacher" / "model" / "model_index.json").is_file()
    assert [stage_runs(project, s) for s in STAGES] == [1, 1, 1, 1, 1, 1, 1]
    assert read_json(project / "data" / "registry" / "challenger.json")["version"] == 1
    assert (project / "data" / "students" / "dcm" / "detail" / "pytorch_lora_weights.safetensors").is_file()
    evaluation = read_json(project / "data" / "eval" / "metrics.json")
    assert {"teacher_6", "dcm_4", "dcm_8"} <= set(evaluation) and evaluation["dcm_4"]["speedup"] > 0
    assert (project / ".prefect").is_dir()  # Prefect stayed inside the project
    # The flows' step lines reach the flow-run logs (Prefect's UI), not only the MLflow run.
    assert any(line.startswith("step 4: loss=") for line in flow_run_logs(prefect_api, "teacher", project))
    assert any("shard(s) planned" in line for line in flow_run_logs(prefect_api, "shard", project))
    # DVC's quality plot: one series per model (colour) over the step count, from the gate's primary metric.
    shown = dvc(project, "plots", "show", "--json", "data/eval/quality.csv")
    assert shown.returncode == 0, shown.stderr
    [plot] = [p for key, plots in json.loads(shown.stdout)["data"].items() if key.endswith("quality.csv") for p in plots]
    spec = plot["content"]
    assert spec["encoding"]["color"]["field"] == "model" and spec["encoding"]["x"]["field"] == "steps"
    series = {(v["model"], v["steps"]): float(v["quality"]) for v in spec["data"]["values"]}
    assert series[("dcm", "4")] == evaluation["dcm_4"]["judge_overall"] and {m for m, _ in series} == {"teacher", "dcm"}
    # The pipeline flow run: one task per DVC stage in dvc.yaml's order, each stage's flow run tagged with it.
    [pipeline] = flow_runs(prefect_api, "pipeline", project)
    *stages, promotion = stage_tasks(prefect_api, pipeline)
    assert stages == [(stage, "COMPLETED", 1) for stage in (*STAGES[:5], "distill_baselines", *STAGES[5:])]
    assert promotion[0].startswith("promote") and promotion[1] == "COMPLETED"  # the promote subflow, last
    assert all(f"pipeline-run:{pipeline['id']}" in run["tags"] for run in flow_runs(prefect_api, "teacher", project))
    # Training progress: a progress artifact per training flow run, at 100 % once it finished.
    for flow_name, count in (("teacher", 1), ("distill", 2)):
        ids = [run["id"] for run in flow_runs(prefect_api, flow_name, project)]
        bars = prefect_post(prefect_api, "/artifacts/filter",
                            {"artifacts": {"type": {"any_": ["progress"]}, "flow_run_id": {"any_": ids}}})
        assert [bar["data"] for bar in bars] == [100.0] * count, bars
    # Samples at every distill.sample_every step, as images MLflow's UI shows with a step slider.
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs_of = client.get_experiment_by_name("dcm").experiment_id  # the MLflow experiment every stage logs to
    semantic = client.search_runs([runs_of], "tags.`dcm.stage` = 'distill_semantic'")[0]
    images = client.list_artifacts(semantic.info.run_id, "images")
    assert sorted(int(a.path.split("+step+")[1].split("+")[0]) for a in images if a.path.endswith(".png")) == [2, 4]
    # Checkpoints are kept for resume but DVC neither records nor caches them.
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    locked = [out["path"] for stage in lock.values() for out in stage.get("outs", [])]
    assert locked and not [path for path in locked if "checkpoints" in path]
    cached = {path.parent.name + path.name for path in (project / ".dvc" / "cache").rglob("*") if path.is_file()}
    checkpoint_files = [path for path in (project / "data" / "checkpoints").rglob("*") if path.is_file()]
    assert checkpoint_files and not [p for p in checkpoint_files if hashlib.md5(p.read_bytes()).hexdigest() in cached]

    again = dvc(project, "repro")
    assert again.returncode == 0 and "up to date" in again.stdout
    assert [stage_runs(project, s) for s in STAGES] == [1, 1, 1, 1, 1, 1, 1]  # nothing re-ran

    prompts = project / "prompts" / "evaluate.txt"  # evaluate.prompt_file: its content is a dependency
    shipped = prompts.read_text()
    prompts.write_text(shipped + "a green square moving down on a black background\n")
    status = dvc(project, "status", "evaluate")
    assert "modified:" in status.stdout and "prompts/evaluate.txt" in status.stdout, status.stdout
    prompts.write_text(shipped)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["precompute"]["wait_for_ranks_s"] = 60  # a param only precompute reads (the profile leaves it)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = dvc(project, "repro")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "Stage 'teacher' didn't change" in changed.stdout
    # precompute re-ran, wrote the same bytes, so the distill stages' inputs did not change
    assert [stage_runs(project, s) for s in STAGES] == [1, 1, 2, 1, 1, 1, 1]

    params["distill"]["detail"]["weight_decay"] = 0.002  # a param only distill_detail reads
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = dvc(project, "repro")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert [stage_runs(project, s) for s in STAGES] == [1, 1, 2, 1, 2, 2, 2]

    # A data param of the active profile makes the first stage stale (and with it, by the DAG, everything
    # after it; re-running all of it is DVC's job, not ours, and costs a whole pipeline here).
    edited = yaml.safe_load(yaml.safe_dump(params))
    edited["profiles"]["tiny"]["data.shapes.val_samples"] = 6
    (project / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    status = dvc(project, "status", "shard")
    assert "shard:" in status.stdout and "profiles.tiny" in status.stdout, status.stdout
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # A DVC experiment: one param changed, its metrics listed beside the workspace's by `dvc exp show`.
    commit_all(project, "baseline")
    experiment = dvc(project, "exp", "run", "--name", "wd-004", "-S", "distill.detail.weight_decay=0.004")
    assert experiment.returncode == 0, experiment.stdout + experiment.stderr
    assert [stage_runs(project, s) for s in STAGES] == [1, 1, 2, 1, 3, 3, 3]  # only the detail stage onwards
    shown = dvc(project, "exp", "show", "--csv")
    assert shown.returncode == 0, shown.stderr
    rows = list(csv.DictReader(io.StringIO(shown.stdout)))
    named = [row for row in rows if row.get("Experiment") == "wd-004"]
    assert named and named[0]["distill.detail.weight_decay"] == "0.004"
    assert named[0]["dcm_4.judge_overall"] not in ("", "-")  # the experiment's evaluation metrics
    runs = client.search_runs([runs_of], "tags.`dcm.stage` = 'distill_detail'")
    assert [run.data.tags.get("dvc.experiment") for run in runs].count("wd-004") == 1  # the MLflow run names it
    assert all(run.data.tags.get("prefect.flow_run_id") for run in runs)  # and the Prefect flow run that ran it

    # A baseline listed for one experiment: distill_baselines trains it, evaluate adds its rows, and the
    # DCM stages (whose settings did not change) are not re-run.
    experiment = dvc(project, "exp", "run", "--name", "with-single", "-S", "distill.baselines=[single]")
    assert experiment.returncode == 0, experiment.stdout + experiment.stderr
    assert stage_runs(project, "distill_single") == 1
    assert [stage_runs(project, s) for s in STAGES] == [1, 1, 2, 1, 3, 4, 4]
    rows = list(csv.DictReader(io.StringIO(dvc(project, "exp", "show", "--csv").stdout)))
    single = [row for row in rows if row.get("Experiment") == "with-single"]
    assert single and single[0]["single_4.judge_overall"] not in ("", "-")

    # Another machine: git clone + dvc pull from the project's default remote (a folder beside it)
    # restores every output, and dvc repro has nothing to do.
    commit_all(project, "results")
    pushed = dvc(project, "push")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    clone = project.parent / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "data" / "teacher" / "model").exists()
    pulled = dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (clone / "data" / "students" / "dcm" / "detail" / "pytorch_lora_weights.safetensors").is_file()
    assert (clone / "data" / "students" / "baselines" / "single" / "model_index.json").is_file()
    status = dvc(clone, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    rerun = dvc(clone, "repro")
    assert rerun.returncode == 0 and "up to date" in rerun.stdout, rerun.stdout + rerun.stderr
    assert not (clone / "mlflow.db").exists()  # no stage ran, so none logged a run

    # A stage that crashes (here: an optimizer setting torch refuses, found only when the detail stage builds its
    # discriminator's optimizer) is retried once, then fails the pipeline run, which names it; the stages before
    # it stay completed (DVC found them up to date).
    params["distill"]["discriminator"]["betas"] = [0.0, 1.5]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run_in(project, "dcm", "pipeline")
    assert failed.returncode != 0 and "stage distill_detail failed" in failed.stderr, failed.stdout + failed.stderr
    last = flow_runs(prefect_api, "pipeline", project)[-1]
    assert last["state_type"] == "FAILED" and "distill_detail" in last["state"]["message"], last["state"]
    assert stage_tasks(prefect_api, last) == [(stage, "COMPLETED", 1) for stage in STAGES[:4]] + [
        ("distill_detail", "FAILED", 2)]


def test_unknown_param_key_fails_with_one_line_naming_it(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["shapes"]["colurs"] = ["red"]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = dvc(project, "repro")
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "colurs" in line]
    assert lines and "data.shapes.colurs: unknown key" in lines[0]
