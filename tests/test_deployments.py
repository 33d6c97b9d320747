"""Integration: prefect.yaml deployed to a real Prefect server on loopback, runs executed by a real worker — on
your own videos, as README "Your own videos" sets them up (real sample videos plus clips encoded here): the
weekly pipeline takes them through every stage to a promoted champion with no ground truth anywhere (the
judge never runs; the teacher, the evaluation and the gate use what needs none), the nightly re-evaluates
that champion, and `dcm generate` and `dcm status` work on the result."""

from __future__ import annotations

import json
import re
import urllib.request

import mlflow
import pytest

from dcm.io import read_json
from tests.footage import decoded_frames, fill_videos, use_videos
from tests.project import copy_project, run_in

pytestmark = pytest.mark.integration

POOL = "dcm"
RUN_S = 900


def api(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def server(prefect_server):
    """The session's `prefect server start` (tests/conftest.py): a real server on loopback, stopped by PID."""
    return prefect_server


def run_deployment(project, env, name: str) -> dict:
    """Trigger a deployment, let one `prefect worker start --run-once` execute it, return the flow run."""
    triggered = run_in(project, "prefect", "deployment", "run", name, env=env)
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", triggered.stdout).group(1)
    worker = run_in(project, "prefect", "worker", "start", "--pool", POOL, "--run-once", env=env, timeout=RUN_S)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    runs = api(env["PREFECT_API_URL"], "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    assert runs, f"flow run {run_id} not found"
    return runs[0]


def test_deployments_are_scheduled_and_run_by_a_worker_on_your_own_videos(server, tmp_path):
    project = copy_project(tmp_path / "project")
    captions = fill_videos(project / "videos")
    use_videos(project, {})
    env = {"PREFECT_API_URL": server, "PREFECT_HOME": str(project / ".prefect")}
    created = run_in(project, "prefect", "work-pool", "create", POOL, "--type", "process", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run_in(project, "prefect", "deploy", "--all", env=env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    deployments = {d["name"]: d for d in api(server, "/deployments/filter")}
    assert set(deployments) == {"weekly", "nightly"}
    crons = {name: [s["schedule"]["cron"] for s in d["schedules"]] for name, d in deployments.items()}
    assert crons == {"weekly": ["0 3 * * 1"], "nightly": ["0 2 * * *"]}
    assert all(d["work_pool_name"] == POOL for d in deployments.values())

    weekly = run_deployment(project, env, "pipeline/weekly")  # the whole pipeline, tiny profile, own videos
    assert weekly["state_type"] == "COMPLETED", weekly["state"]["message"]
    assert read_json(project / "data" / "registry" / "challenger.json")["version"] == 1
    assert (project / "data" / "eval" / "report.md").is_file()

    shards = read_json(project / "data" / "shards" / "manifest.json")
    assert shards["source"] == "videos" and shards["splits"]["val"]["samples"] > 0
    assert [s["path"] for s in shards["skipped"]] == ["broken.mp4"]
    assert shards["splits"]["train"]["samples"] + shards["splits"]["val"]["samples"] == 2 * len(captions)
    teacher = read_json(project / "data" / "teacher" / "metrics.json")
    assert "final_loss" in teacher and "mmd_vs_real" in teacher and not any(k.startswith("judge") for k in teacher)
    assert (project / "data" / "teacher" / "loss.png").is_file() and (project / "data" / "teacher" / "samples.png").is_file()
    evaluation = read_json(project / "data" / "eval" / "metrics.json")
    for row in ("dcm_4", "dcm_8"):
        assert {"ssim_vs_teacher", "psnr_vs_teacher", "temporal_flicker", "oversaturated_fraction", "mmd_vs_real",
                "speedup"} <= set(evaluation[row])
        assert not any(k.startswith("judge") for k in evaluation[row])

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    first = client.get_model_version("dcm-toy", "1")
    assert first.tags["dcm.promotion.decision"] == "promoted", first.tags
    assert first.tags["dcm.promotion.reasons"].startswith("gate of data.source videos"), first.tags
    nightly = run_deployment(project, env, "reevaluate-champion/nightly")  # the champion the weekly run made
    assert nightly["state_type"] == "COMPLETED", nightly["state"]["message"]
    assert (project / "data" / "registry" / "reevaluation" / "metrics.json").is_file()
    champion = client.get_model_version_by_alias("dcm-toy", "champion")
    assert int(champion.version) == 1 and champion.tags["dcm.reevaluation.result"] == "ok"

    out = tmp_path / "clip.mp4"
    generated = run_in(project, "dcm", "generate", captions["bikes.mp4"], "--out", str(out))
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert decoded_frames(out) == 4  # the tiny profile's data.frames
    status = run_in(project, "dcm", "status")
    assert "MMD² to held-out clips" in status.stdout and "champion version 1" in status.stdout, status.stdout
