"""`dcm import-runs`: results written by research/run_stages.py away from the tracking store (a GPU machine)
become one MLflow run per stage in the project's store, with their params, logged steps and artifacts;
importing the same folder again adds nothing."""

import json
import sqlite3
import subprocess
import sys

import pytest

from dcm.models.packed import unpack_verified
from tests.conftest import REPO, TINY_DISTILL, TINY_TEACHER
from tests.project import copy_project, run_in, stage_runs

pytestmark = pytest.mark.integration


def test_results_from_another_machine_become_mlflow_runs(tmp_path):
    out = tmp_path / "out"
    overrides = [*TINY_TEACHER, *TINY_DISTILL, "data.shapes.train_samples=16", "data.shapes.val_samples=6",
                 "shard.samples_per_shard=8"]
    made = subprocess.run([sys.executable, str(REPO / "research" / "run_stages.py"), "--out", str(out), "--work",
                           str(tmp_path / "work"), "--workers", "1", "--stages", "shard,teacher,precompute,semantic",
                           *[arg for o in overrides for arg in ("-S", o)]], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-3000:]
    record = json.loads((out / "teacher_metrics.json").read_text())  # the teacher travels int8 by default
    assert record["encoding"] == "int8" and record["content_hash"] != record["trained_content_hash"]
    unpack_verified(out, tmp_path / "unpacked")  # the record's hash is what its parts decode to
    project = copy_project(tmp_path / "project")

    first = run_in(project, "dcm", "import-runs", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    assert [stage_runs(project, stage) for stage in ("teacher", "semantic", "detail")] == [1, 1, 0]
    with sqlite3.connect(project / "mlflow.db") as db:
        steps = db.execute("select m.step from metrics m join tags t on m.run_uuid = t.run_uuid where "
                           "t.key = 'dcm.stage' and t.value = 'semantic' and m.key = 'consistency' order by m.step").fetchall()
        judged = db.execute("select count(*) from metrics m join tags t on m.run_uuid = t.run_uuid where "
                            "t.key = 'dcm.stage' and t.value = 'semantic' and m.key = 'judge_overall'").fetchone()[0]
        device = db.execute("select value from tags where key = 'dcm.device'").fetchall()
        logged = db.execute("select value from params where key = 'overrides'").fetchall()
        origin = db.execute("select value from tags where key = 'dcm.params_from'").fetchall()
        commits = db.execute("select value from tags where key = 'git_commit'").fetchall()
        importer = db.execute("select value from tags where key = 'dcm.imported_by_commit'").fetchall()
    assert [step for (step,) in steps] == [1, 2, 3, 4] and judged == 1  # every logged step, then the result
    assert device == [("cpu",), ("cpu",)] and all("teacher.toy.model.num_layers=1" in value for (value,) in logged)
    assert origin == [("the results",), ("the results",)]  # the configuration it ran, not today's params.yaml
    made_by = json.loads((out / "run.json").read_text())["source_commit"]  # this checkout's HEAD when it ran
    assert len(made_by) >= 40 and commits == [(made_by,), (made_by,)]  # the code that made them, not the importer's
    assert len(importer) == 2 and importer[0][0] != made_by  # the copied project: a repository of its own

    again = run_in(project, "dcm", "import-runs", str(out))
    assert again.returncode == 0 and again.stdout.count("already imported") == 2
    assert [stage_runs(project, stage) for stage in ("teacher", "semantic")] == [1, 1]

    refused = run_in(project, "dcm", "import-runs", str(tmp_path))
    assert refused.returncode != 0 and "import a folder research/run_stages.py or research/run_matrix.py wrote" in refused.stderr
