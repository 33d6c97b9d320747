"""research/run_matrix.py on a tiny plan (CPU): jobs share a semantic expert where stage 1's settings are
equal, every student is evaluated against the teacher's rows, and research/summarise_matrix.py turns the
result into RESULTS.md's tables and a sample grid."""

import json
import signal
import sqlite3
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import REPO, TINY_DISTILL, TINY_TEACHER
from tests.project import copy_project, run_in, stage_runs

pytestmark = pytest.mark.integration

DATA = ["data.shapes.train_samples=16", "data.shapes.val_samples=6", "shard.samples_per_shard=8"]
PLAN = {"seeds": [0], "common": ["evaluate.prompts=3", "evaluate.student_steps=[1,4]", "evaluate.vbench.dimensions=[]",
                                 "evaluate.latency_repeats=1", "evaluate.grid_prompts=2"],
        "runs": {"dcm": {"method": "dcm"},
                 "lora_tc": {"method": "dcm", "overrides": ["distill.adversarial=none"]},  # dcm's semantic expert
                 "lcm": {"method": "lcm"}},
        "final": ["dcm", "lcm"], "final_overrides": ["evaluate.student_steps=[4]"],
        "tables": {"comparison": ["dcm", "lcm"], "ladder": ["lora_tc", "dcm"], "tuning": []}}


def script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(REPO / "research" / name), *args], capture_output=True, text=True,
                          timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_plan_trains_shares_evaluates_and_summarises(tmp_path):
    overrides = sum((["-S", o] for o in [*TINY_TEACHER, *TINY_DISTILL, *DATA]), [])
    teacher = tmp_path / "teacher-parts"
    script("run_stages.py", "--out", str(teacher), "--work", str(tmp_path / "teacher-work"), "--workers", "2",
           "--stages", "shard,teacher", *overrides)
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    out = tmp_path / "out"
    log = script("run_matrix.py", "--plan", str(plan), "--work", str(tmp_path / "work"), "--out", str(out),
                 "--teacher-parts", str(teacher), "--workers", "2", "--per-gpu", "3", "--budget-s", "800", *overrides)
    jobs = json.loads((out / "matrix.json").read_text())
    assert sorted(jobs) == ["dcm-s0", "lcm-s0", "lora_tc-s0", "semantic-dcm-s0", "teacher-eval"], log
    # lora_tc has no semantic expert of its own: dcm's stage-1 settings are its own
    assert all(job["state"] == "done" for job in jobs.values()), log
    for name in ("dcm-s0", "lora_tc-s0"):
        assert {"teacher_6", "dcm_1", "dcm_4"} <= set(jobs[name]["metrics"])
    assert jobs["lcm-s0"]["metrics"]["lcm_4"]["psnr_vs_teacher"] > 0
    # every job's whole logged curve comes back, the detail stage's discriminator health included
    curve = jobs["dcm-s0"]["curve"]
    assert curve[-1]["step"] == 4 and {"d_hinge", "d_accuracy", "d_clip_accuracy", "gan_grad_share"} <= set(curve[-1])
    # the teacher's rows were computed once and reused by every student's evaluation
    assert "teacher_6 reused" in (tmp_path / "work" / "runs" / "lcm-s0" / "log.txt").read_text()
    final = json.loads((out / "final_metrics.json").read_text())
    assert {"dcm_4", "lcm_4"} <= set(final) and (out / "final_samples.png").stat().st_size > 0
    assert "dcm_1" not in final  # the plan's final_overrides apply to the final evaluation only
    samples = load_file(out / "samples.safetensors")
    assert {"teacher_6", "dcm/dcm_4", "lora_tc/dcm_4", "lcm/lcm_1"} <= set(samples)
    assert tuple(samples["dcm/dcm_4"].shape) == (2, 4, 16, 16, 3)  # grid prompts, frames, H, W, RGB

    # samples from two machines (here: the one file split in two) make one grid
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_file({k: v for k, v in samples.items() if k.startswith("lcm/")}, str(first))
    save_file({k: v for k, v in samples.items() if not k.startswith("lcm/")}, str(second))
    summary = script("summarise_matrix.py", str(out / "matrix.json"), "--plan", str(plan), "--samples",
                     str(first), str(second), "--grid", str(tmp_path / "grid.png"), "--gif",
                     str(tmp_path / "grid.gif"))
    grid_rows = summary.split("grid rows (top to bottom): ")[1].split(", ")
    assert grid_rows[0] == "teacher_6" and {"dcm/dcm_4", "lcm/lcm_1", "lcm/lcm_4"} <= set(map(str.strip, grid_rows))
    assert "| dcm | 4 | 1 |" in summary and "| lcm | 1 | 1 |" in summary and "| lora_tc | 4 | 1 |" in summary
    assert "dcm-4 − lcm-4" in summary
    assert "| dcm-s0 | 4 |" in summary.split("## The discriminator's health")[1]  # from its logged curve
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "grid.gif").stat().st_size > 0

    # The plan's runs in the project's MLflow store: one run per finished job, named after it, with its curve;
    # importing again adds nothing
    project = copy_project(tmp_path / "project")
    imported = run_in(project, "dcm", "import-runs", str(out))
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert [stage_runs(project, stage) for stage in ("semantic", "detail", "lcm", "teacher")] == [1, 2, 1, 0]
    with sqlite3.connect(project / "mlflow.db") as db:
        names = {name for (name,) in db.execute("select value from tags where key = 'mlflow.runName'")}
        hinge = db.execute("select m.step from metrics m join tags t on m.run_uuid = t.run_uuid where t.key = "
                           "'mlflow.runName' and t.value = 'dcm-s0' and m.key = 'd_hinge' order by m.step").fetchall()
        judged = db.execute("select m.value from metrics m join tags t on m.run_uuid = t.run_uuid where t.key = "
                            "'mlflow.runName' and t.value = 'lcm-s0' and m.key = 'lcm_4.judge_overall'").fetchall()
        commits = {commit for (commit,) in db.execute("select value from tags where key = 'git_commit'")}
    assert names == {"semantic-dcm-s0", "dcm-s0", "lora_tc-s0", "lcm-s0"}
    assert commits == {jobs["dcm-s0"]["source_commit"]} and len(commits.pop()) >= 40  # the code that ran, not the importer
    assert [step for (step,) in hinge] == [1, 2, 3, 4]
    assert judged == [(pytest.approx(jobs["lcm-s0"]["metrics"]["lcm_4"]["judge_overall"]),)]
    again = run_in(project, "dcm", "import-runs", str(out))
    assert again.returncode == 0 and again.stdout.count("already imported") == 4, again.stdout

    # Another machine continues the plan: what the first finished is kept, not trained again, and the
    # final evaluation leaves out the students that stayed on the first machine.
    again = tmp_path / "again"
    log = script("run_matrix.py", "--plan", str(plan), "--work", str(tmp_path / "work2"), "--out", str(again),
                 "--teacher-parts", str(teacher), "--workers", "2", "--per-gpu", "3", "--budget-s", "800",
                 "--earlier", str(out / "matrix.json"), *overrides)
    states = {name: job["state"] for name, job in json.loads((again / "matrix.json").read_text()).items()}
    assert states == {"teacher-eval": "done", **{name: "earlier" for name in jobs if name != "teacher-eval"}}, log
    assert "dcm at seed 0 was trained on an earlier machine" in log and not (again / "final_metrics.json").exists()
    kept = json.loads((again / "matrix.json").read_text())["lora_tc-s0"]["metrics"]
    assert kept == jobs["lora_tc-s0"]["metrics"]

    # A budget that ends before a job could start: exit code 3, call again.
    stopped = subprocess.run([sys.executable, str(REPO / "research" / "run_matrix.py"), "--plan", str(plan),
                              "--work", str(tmp_path / "work2"), "--out", str(again), "--budget-s", "1",
                              "--runs", "lcm", *overrides], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert stopped.returncode == 3 and "work left: lcm-s0" in stopped.stdout, stopped.stdout + stopped.stderr

    # SIGTERM (device_claim.sh's timeout) stops the plan like its budget: exit 3, its jobs stopped, matrix.json written
    work3 = tmp_path / "work3"
    plan_run = subprocess.Popen([sys.executable, str(REPO / "research" / "run_matrix.py"), "--plan", str(plan), "--work",
                                 str(work3), "--out", str(work3 / "out"), "--teacher-parts", str(teacher), "--workers", "2",
                                 "--budget-s", "800", "--runs", "lcm", *overrides], stdout=subprocess.PIPE, text=True,
                                cwd=REPO)
    seen = ""
    while "lcm-s0: started" not in seen:
        line = plan_run.stdout.readline()
        assert line, seen  # the plan ended before its job started
        seen += line
    plan_run.send_signal(signal.SIGTERM)
    assert plan_run.wait(timeout=120) == 3
    assert json.loads((work3 / "out" / "matrix.json").read_text())["lcm-s0"]["state"] == "stopped"
    assert subprocess.run(["pgrep", "-f", str(work3)], capture_output=True).stdout == b""  # no job left running


def test_a_misspelt_plan_key_stops_before_any_work(tmp_path, monkeypatch):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({**PLAN, "final_overides": ["evaluate.latency_repeats=3"],
                                    "runs": {**PLAN["runs"], "lcm": {"method": "lcm", "override": ["x=1"]}}}))
    done = subprocess.run([sys.executable, str(REPO / "research" / "run_matrix.py"), "--plan", str(plan),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and not (tmp_path / "work").exists()
    assert "final_overides: unknown plan key" in done.stderr and "runs.lcm.override: unknown run key" in done.stderr
    # every committed plan is well formed, and each of its runs' overrides is a valid configuration
    monkeypatch.syspath_prepend(str(REPO / "research"))
    from run_matrix import plan_jobs, plan_mistakes
    plans = sorted((REPO / "research" / "plans").glob("*.yaml"))
    assert [path.name for path in plans if plan_mistakes(yaml.safe_load(path.read_text()))] == []
    for path in plans:
        assert plan_jobs(yaml.safe_load(path.read_text()), ["profile=gpu"], tmp_path / "jobs")


def test_pcm_rows_at_the_reference_placement_are_a_run_of_their_own(tmp_path):
    def row(judge: float) -> dict:
        return {"judge_overall": judge, "psnr_vs_teacher": 20.0}
    matrix = {"teacher-eval": {"run": None, "metrics": {"teacher_50": row(0.95)}}}
    for seed in (2, 0, 1):
        matrix[f"dcm-s{seed}"] = {"run": "dcm", "seed": seed, "metrics": {"dcm_4": row(0.93 + seed / 1000)}}
        matrix[f"pcm-s{seed}"] = {"run": "pcm", "seed": seed, "metrics": {"pcm_4": row(0.94 + seed / 1000),
                                                            "pcm_reference_4": row(0.90 + seed / 1000)}}
    (tmp_path / "matrix.json").write_text(json.dumps(matrix))
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"seeds": [0, 1, 2], "runs": {},
                                    "tables": {"comparison": ["dcm", "pcm", "pcm_reference"], "claim": ["dcm"]}}))
    summary = script("summarise_matrix.py", str(tmp_path / "matrix.json"), "--plan", str(plan))
    # three seeds each, not six pcm rows: the two placements are kept apart
    assert "| pcm | 4 | 3 | 0.941 ± 0.001 |" in summary and "| pcm_reference | 4 | 3 | 0.901 ± 0.001 |" in summary
    assert "dcm-4 − pcm-4 = -0.010" in summary and "behind by more than the spread" in summary
    assert "dcm-4 − pcm_reference-4 = +0.030 (spreads 0.001, 0.001): ahead by more than the spread" in summary
    # each seed's score beside the mean, in seed order whatever the record's order
    assert "dcm-4 per seed: 0.930 (s0) / 0.931 (s1) / 0.932 (s2)" in summary
    assert "pcm_reference-4 per seed: 0.900 (s0) / 0.901 (s1) / 0.902 (s2)" in summary


def test_a_job_finished_elsewhere_is_carried_only_with_the_plans_settings(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "research"))
    from run_matrix import carry_over, plan_jobs
    plan = {**PLAN, "runs": {"lcm": {"method": "lcm"}}}
    finished = {"state": "done", "metrics": {"lcm_4": {"judge_overall": 0.9}}}

    def record(*extra: str) -> dict:
        overrides = [*PLAN["common"], "distill.seed=0", *extra]
        return {"lcm-s0": {**finished, "overrides": overrides}}

    # compiled there, eager here: how a job ran is not what it trained, so it is carried
    jobs = plan_jobs(plan, [], tmp_path)
    carry_over(jobs, record("distill.baseline.compile=all"))
    assert {job.name: job.state for job in jobs}["lcm-s0"] == "earlier"
    # another learning rate there: its numbers would sit under a setting they were not made with
    jobs = plan_jobs(plan, [], tmp_path)
    with pytest.raises(SystemExit, match=r"lcm-s0 was finished with other settings.*distill\.baseline\.lr"):
        carry_over(jobs, record("distill.baseline.lr=0.5"))


def test_runs_pick_whole_runs_or_single_seeds_in_the_plans_order(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "research"))
    from run_matrix import chosen_runs
    plan = {"seeds": [0, 1, 2], "runs": {"dcm": {"method": "dcm"}, "pcm": {"method": "pcm"},
                                         "tuned": {"method": "dcm", "seeds": [0]}}}
    assert chosen_runs(plan, ["pcm", "dcm-s2", "dcm-s0"]) == {"dcm": {"method": "dcm", "seeds": [0, 2]},
                                                             "pcm": {"method": "pcm", "seeds": [0, 1, 2]}}
    assert chosen_runs(plan, ["dcm-s1", "dcm"])["dcm"]["seeds"] == [0, 1, 2]
    for wrong in ("lcm", "tuned-s1", "dcm-sx"):  # no such run; a seed its run does not have; not a seed
        with pytest.raises(ValueError, match=f"{wrong} is neither a run"):
            chosen_runs(plan, [wrong])


def test_a_texture_column_appears_only_for_a_profile_that_judges_texture(tmp_path):
    def matrix(**extra: float) -> dict:
        row = {"judge_overall": 0.9, "judge_shape": 0.8, **extra}
        return {"teacher-eval": {"run": None, "metrics": {"teacher_50": row}},
                "dcm-s0": {"run": "dcm", "seed": 0, "metrics": {"dcm_4": row}}}
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"seeds": [0], "runs": {}, "tables": {"comparison": ["dcm"]}}))
    textured_row = dict(judge_texture=0.25, judge_texture_checked=0.125, patch_grid=1.5, judge_contrast_checked=0.1)
    for name, record in (("plain", matrix()), ("textured", matrix(**textured_row))):
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    plain = script("summarise_matrix.py", str(tmp_path / "plain.json"), "--plan", str(plan))
    textured = script("summarise_matrix.py", str(tmp_path / "textured.json"), "--plan", str(plan))
    assert "| run | steps | seeds | judge overall | shape | colour | coherence | motion |" in plain
    assert "texture" not in plain
    # a surface's own column only where rows carry it (records from before the breakdown have none)
    assert "| run | steps | seeds | judge overall | shape | texture | texture: checked | colour |" in textured
    assert "| dcm | 4 | 1 | 0.900 | 0.800 | 0.250 | 0.125 | – |" in textured
    assert "| temporal flicker | patch grid | contrast: checked |" in textured
    assert "| 0.125 | – | – | – | – | – | – | – | 1.50 | 0.100 |" in textured
    assert "patch grid" not in plain


def test_check_lists_the_jobs_and_names_the_one_whose_settings_are_wrong(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    finished = {"state": "done", "overrides": [*PLAN["common"], "distill.seed=0"], "metrics": {"lcm_4": {}}}
    (tmp_path / "earlier.json").write_text(json.dumps({"lcm-s0": finished}))
    listing = script("run_matrix.py", "--plan", str(plan), "--work", str(tmp_path / "work"), "--check",
                     "--earlier", str(tmp_path / "earlier.json"))
    assert "lora_tc-s0: waiting (from semantic-dcm-s0)" in listing and "lcm-s0: earlier" in listing
    assert "4 of 5 jobs to run" in listing and not (tmp_path / "work").exists()
    # a wrong LCM setting is named before anything is set up, with --check and without it (not when its job starts)
    wrong_lcm = {"method": "lcm", "overrides": ["distill.baseline.lr=x"]}
    plan.write_text(yaml.safe_dump({**PLAN, "runs": {**PLAN["runs"], "lcm": wrong_lcm}}))
    for check in (["--check"], []):
        done = subprocess.run([sys.executable, str(REPO / "research" / "run_matrix.py"), "--plan", str(plan), *check,
                               "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert done.returncode == 2 and "lcm-s0: " in done.stderr and "distill.baseline.lr" in done.stderr
        assert not (tmp_path / "work").exists()
