"""Train and evaluate a plan of runs (research/plans/claim.yaml) on one machine: every GPU, several runs per GPU.

    python research/run_matrix.py --plan research/plans/claim.yaml --out $OUT --work /tmp/w \
        --teacher-parts .gpu_teacher --per-gpu 6 --budget-s 540 -S profile=gpu

Small students leave a GPU mostly idle, so runs share GPUs as separate processes. Each run is one job
per stage (the semantic expert is one job shared by every run whose semantic-stage settings are equal);
a job trains with the pipeline's stage function and evaluates its student with the evaluation stage's
code against the teacher's rows, computed once. Jobs still going when `--budget-s` runs out checkpoint
and stop; the same command continues them (finished jobs are kept). Latency under shared GPUs is
meaningless, so only the `final` runs, evaluated together on an idle GPU at the end, report it.

Writes to --out: matrix.json (every job: state, overrides, all evaluation rows), matrix.log (the tail of
each job's log), samples.safetensors (every run's seed-0 clips of the first evaluate.grid_prompts prompts)
and final_* (report.md, metrics.json, samples.png). `--earlier <matrix.json>` continues a plan that
another machine began: the jobs it finished are kept as they are (their students stay on that machine, so
the final evaluation leaves them out). Exit code 3: work is left (a job stopped, or the final evaluation
did not fit); the same command continues it. `--check` (with the call's --runs, --earlier and -S, on any
machine) resolves every job's settings and lists the jobs, then stops: a wrong run name or key costs no device time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finish_first import Pace, jobs_to_keep  # noqa: E402
from run_stages import REPO, shard, source_commit, unpack_teacher  # noqa: E402

STOPPED = 3  # a job's exit code when its time ran out: its checkpoint continues it next time
TEACHER_EVAL, TEACHER_JOB = "eval-teacher", "teacher-eval"
TEACHER_WAIT_S = 300  # a teacher job that failed: students evaluate the teacher themselves
MARGIN_S = 25  # a job stops training this long before the budget ends, to checkpoint
STOP_WAIT_S = 60  # a stopped job's time to finish its step and checkpoint before it is killed
LOG_TAIL = 15
CURVE = "curve.jsonl"  # a job's logged steps
SAMPLES = "samples.safetensors"  # a job's first evaluate.grid_prompts clips of every row: sample grids across runs


@dataclass
class Job:
    name: str
    stage: str  # semantic | detail | lcm | pcm | single
    overrides: list[str]
    needs: str | None = None  # the semantic job a detail job starts from
    run: str | None = None  # the plan's run this job's student belongs to (None: a shared semantic expert)
    seed: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)
    gpu: int = 0
    state: str = "waiting"  # waiting | running | done | stopped | failed | earlier (finished on another machine)
    earlier: dict | None = None  # that machine's matrix.json entry
    pace: Pace | None = field(default=None, repr=False)  # a running training job's progress (finish_first.py)


def paths(work: Path, job: str) -> list[str]:
    root = work / "runs" / job
    return [f"distill.out_dir={root}/students", f"distill.checkpoint_dir={root}/checkpoints",
            f"evaluate.out_dir={root}/eval"]


def shared_paths(work: Path) -> list[str]:
    return [f"shard.dir={work}/shards", f"teacher.out_dir={work}/teacher",
            f"teacher.checkpoint_dir={work}/checkpoints/teacher", f"precompute.dir={work}/latents",
            f"evaluate.out_dir={work}/{TEACHER_EVAL}"]


PLAN_KEYS = {"seeds", "common", "runs", "final", "final_overrides", "tables"}
RUN_KEYS = {"method", "seeds", "overrides"}


def plan_mistakes(plan: dict) -> list[str]:
    """Misspelt keys of a plan, each named: a typo must not silently drop a run's overrides."""
    mistakes = [f"{key}: unknown plan key (known: {', '.join(sorted(PLAN_KEYS))})" for key in set(plan) - PLAN_KEYS]
    mistakes += [f"{key}: missing (every plan names its runs and their seeds)" for key in ("runs", "seeds")
                 if key not in plan]
    runs = plan.get("runs", {})
    for run, spec in runs.items():
        mistakes += [f"runs.{run}.{key}: unknown run key (known: {', '.join(sorted(RUN_KEYS))})"
                     for key in set(spec) - RUN_KEYS]
    mistakes += [f"final: {run} is not a run of the plan" for run in plan.get("final", []) if run not in runs]
    return sorted(mistakes)


def chosen_runs(plan: dict, chosen: list[str]) -> dict[str, dict]:
    """The plan's runs a call's --runs names, in the plan's order: `lcm` is every seed of lcm, `lcm-s0` seed 0
    alone (a control that one seed answers, without the device time of the others)."""
    planned = {run: spec.get("seeds", plan["seeds"]) for run, spec in plan["runs"].items()}
    seeds: dict[str, list[int]] = {}
    for name in chosen:
        run, _, seed = name.rpartition("-s")
        if name in planned:
            seeds[name] = planned[name]
        elif run in planned and seed.isdigit() and int(seed) in planned[run]:
            seeds.setdefault(run, []).append(int(seed))
        else:
            raise ValueError(f"{name} is neither a run of the plan nor one of its runs' seeds (run-sN)")
    return {run: {**spec, "seeds": sorted(set(seeds[run]))} for run, spec in plan["runs"].items() if run in seeds}


def plan_jobs(plan: dict, base: list[str], work: Path) -> list[Job]:
    """Jobs in the plan's priority order; semantic experts deduplicated by the settings stage 1 reads. Every
    job's settings are resolved here, so a wrong key or value of any run (LCM's and PCM's too) stops the plan
    with its job's name before the machine spends a minute on shards and latents."""
    from dcm.config import ConfigError, config_to_dict, load_config
    from dcm.io import sha256_json
    from dcm.stages.distill import method_settings, training_seed

    def resolved(name: str, overrides: list[str]):
        try:
            return load_config(REPO / "params.yaml", overrides)
        except ConfigError as error:
            raise ConfigError(f"{name}: {error}") from None

    teacher = Job(TEACHER_JOB, "teacher", [*base, *plan.get("common", [])])
    resolved(teacher.name, teacher.overrides)
    jobs, semantic_jobs = [teacher], {}
    for run, spec in plan["runs"].items():
        for seed in spec.get("seeds", plan["seeds"]):
            overrides = [*base, *plan.get("common", []), f"distill.seed={seed}", *spec.get("overrides", [])]
            method, name = spec["method"], f"{run}-s{seed}"
            cfg = resolved(name, overrides)
            if method != "dcm":
                jobs.append(Job(name, method, overrides, run=run, seed=seed))
                continue
            key = sha256_json({"settings": method_settings(cfg, "semantic"), "seed": training_seed(cfg),
                               "train": config_to_dict(cfg.distill.semantic), "schedule": config_to_dict(cfg.schedule)})
            if key not in semantic_jobs:
                semantic_jobs[key] = Job(f"semantic-{name}", "semantic", overrides, seed=seed)
                jobs.append(semantic_jobs[key])
            jobs.append(Job(name, "detail", overrides, needs=semantic_jobs[key].name, run=run, seed=seed))
    return jobs


def job_listing(jobs: list[Job]) -> str:
    """One line per job: its name, state and, for a detail job, the semantic expert it starts from."""
    lines = [f"{job.name}: {job.state}" + (f" (from {job.needs})" if job.needs else "") for job in jobs]
    waiting = sum(job.state == "waiting" for job in jobs)
    return "\n".join([*lines, f"{waiting} of {len(jobs)} jobs to run"])


# How a job runs, not what it trains: a job another machine finished with other values of these counts as the
# same experiment (whether compiling moves the judge beyond bf16 rounding is what issue21.yaml's pcm_eager measures)
EXECUTION_ONLY = (".compile", ".checkpoint_every", ".log_every", ".latency_repeats")


def setting_differences(earlier: list[str], now: list[str]) -> dict[str, tuple]:
    """{key: (earlier value, value now)} where two jobs' overrides resolve (over today's params.yaml) to different
    settings, execution-only keys left out."""
    from dcm.config import config_to_dict, flatten, load_config
    before, after = (flatten(config_to_dict(load_config(REPO / "params.yaml", overrides)))
                     for overrides in (earlier, now))
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key) and not key.endswith(EXECUTION_ONLY)}


def carry_over(jobs: list[Job], record: dict) -> None:
    """Jobs another machine finished (its matrix.json) are not run again: device time is too scarce to
    train a student twice for the final evaluation's latency. Semantic experts are, where a detail job
    still to run starts from them (the expert itself did not come back). A finished job whose settings differ
    from the plan's now stops the plan: its numbers would sit in a table under a setting they were not made with."""
    for job in jobs:
        entry = record.get(job.name, {})
        if job.stage != "semantic" and entry.get("state") in ("done", "earlier") and "metrics" in entry:
            differences = setting_differences(entry["overrides"], job.overrides)
            if differences:
                listed = "; ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in differences.items())
                raise SystemExit(f"--earlier: {job.name} was finished with other settings than this plan gives it "
                                 f"({listed}). Give its run a new name in the plan, or continue without --earlier")
            job.state, job.earlier = "earlier", entry
    needed = {job.needs for job in jobs if job.needs and job.state != "earlier"}
    for job in jobs:
        if job.stage == "semantic" and job.name not in needed:
            job.state = "earlier"


def prepare(base: list[str], work: Path, teacher_parts: str | None, workers: int) -> None:
    """Shards, teacher and latents, once for every job."""
    from dcm.config import load_config
    from dcm.stages.paths import MANIFEST as SHARD_MANIFEST
    from dcm.stages.paths import MANIFEST as LATENTS_MANIFEST
    from dcm.stages.precompute import run_precompute_stage
    cfg = load_config(REPO / "params.yaml", [*base, *shared_paths(work)])
    start = time.perf_counter()
    if not (work / "shards" / SHARD_MANIFEST).is_file():
        shard(cfg, workers)
        print(f"shards: {time.perf_counter() - start:.0f} s", flush=True)
    if not (work / "teacher" / "model").is_dir():
        if not teacher_parts:
            raise SystemExit("no teacher in --work: pass --teacher-parts (train one with research/run_stages.py)")
        unpack_teacher(Path(teacher_parts), work / "teacher")
    if not (work / "latents" / LATENTS_MANIFEST).is_file():
        start = time.perf_counter()
        run_precompute_stage(cfg)
        print(f"precompute: {time.perf_counter() - start:.0f} s", flush=True)


def evaluate_teacher(overrides: list[str], work: Path) -> int:
    """The teacher's rows, which every student's evaluation reuses (a job: it runs beside the training)."""
    from dcm.config import load_config
    from dcm.stages.evaluate import evaluate_students
    evaluate_students(load_config(REPO / "params.yaml", [*overrides, *shared_paths(work)]), {}, work / TEACHER_EVAL)
    return 0


def wait_for_teacher_rows(work: Path, timeout_s: float) -> None:
    """Until the teacher job has written its rows; after `timeout_s` the evaluation makes them itself."""
    end = time.time() + timeout_s
    while not (work / TEACHER_EVAL / "metrics.json").is_file() and time.time() < end:
        time.sleep(5)


def curve_logger(path: Path):
    """The stage's on_log: each logged step printed and appended to `path` (JSON lines; a resumed job appends
    on, and its repeated steps replace the stopped run's: see read_curve), so every job's whole curve, the
    discriminator's health included, comes back in matrix.json rather than only its log's tail."""
    def log_line(step: int, metrics: dict) -> None:
        print(step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        with open(path, "a") as file:
            file.write(json.dumps({"step": step, **metrics}) + "\n")
    return log_line


def read_curve(path: Path) -> list[dict]:
    by_step = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line a killed job was writing
            continue
        by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def last_logged_step(curve: Path) -> int | None:
    """The highest step a job's curve file has logged, None before its first."""
    records = read_curve(curve)
    return records[-1]["step"] if records else None


def run_job(spec: dict, work: Path, budget_end: float) -> int:
    """One job in this process: train its stage, then (students) evaluate; exit code STOPPED when out of time."""
    from dcm.config import load_config
    from dcm.errors import StoppedEarly
    from dcm.stages.evaluate import evaluate_students
    from dcm.eval.row_cache import ROWS_DIR
    from dcm.stages.distill import run_distill_stage
    from dcm.stages.paths import OUTPUT_NAMES, output_folder
    from safetensors.torch import load_file, save_file
    if spec["stage"] == "teacher":
        return evaluate_teacher(spec["overrides"], work)
    root = work / "runs" / spec["name"]
    limit = max(1, int(budget_end - time.time() - MARGIN_S))
    limits = [f"distill.{part}.time_limit_s={limit}" for part in ("semantic", "detail", "baseline")]
    cfg = load_config(REPO / "params.yaml", [*spec["overrides"], *shared_paths(work), *paths(work, spec["name"]),
                                             *limits])
    if spec["needs"]:  # the shared semantic expert, copied where the detail stage looks for it
        semantic = output_folder(cfg, "semantic")
        if not semantic.is_dir():
            shutil.copytree(work / "runs" / spec["needs"] / "students" / "semantic", semantic)
    name = OUTPUT_NAMES[spec["stage"]]
    if not (output_folder(cfg, name) / "model_index.json").is_file():
        from dcm.train.loop import request_stop
        signal.signal(signal.SIGTERM, request_stop)  # the scheduler's stop: checkpoint at this step, then exit 3
        try:
            run_distill_stage(cfg, spec["stage"], on_log=curve_logger(root / CURVE))
        except StoppedEarly as stopped:
            print(stopped, flush=True)
            return STOPPED
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an evaluation stopped by the budget just ends
    if spec["stage"] == "semantic":
        return 0
    eval_dir = Path(cfg.evaluate.out_dir)
    wait_for_teacher_rows(work, TEACHER_WAIT_S)
    if (work / TEACHER_EVAL / ROWS_DIR).is_dir():
        shutil.copytree(work / TEACHER_EVAL / ROWS_DIR, eval_dir / ROWS_DIR, dirs_exist_ok=True)
    result = evaluate_students(cfg, {name: output_folder(cfg, name)}, eval_dir)
    grid = {row: load_file(eval_dir / ROWS_DIR / f"{row}.safetensors")["clips"][: cfg.evaluate.grid_prompts]
            for row in result["metrics"] if (eval_dir / ROWS_DIR / f"{row}.safetensors").is_file()}
    save_file({row: clips.contiguous() for row, clips in grid.items()}, str(root / SAMPLES))
    (root / "result.json").write_text(json.dumps({"metrics": result["metrics"]}, default=float))
    return 0


def schedule(jobs: list[Job], work: Path, out: Path, gpus: int, per_gpu: int, budget_end: float,
             finish_first: bool = False) -> None:
    """Start ready jobs on the least loaded GPU, in priority order, until all ended or the budget ran out.
    finish_first: where the jobs sharing a GPU cannot all finish, pause those that keep the most from finishing
    (finish_first.py); they go on once the others are done. Until then no job starts, on any GPU: a machine of
    several GPUs may idle a slot meanwhile, the price of keeping this simple for a session's last call."""
    by_name = {job.name: job for job in jobs}
    for job in jobs:
        root = work / "runs" / job.name
        done = {"semantic": root / "students" / "semantic",
                "teacher": work / TEACHER_EVAL / "metrics.json"}.get(job.stage, root / "result.json")
        if done.exists() and job.state == "waiting":
            job.state = "done"
    finishing, paused = False, []
    while True:
        ended = [j for j in jobs if j.state == "running" and j.process.poll() is not None]
        for job in ended:
            code = job.process.returncode
            job.state = {0: "done", STOPPED: "stopped"}.get(code, "failed")
            print(f"{time.strftime('%H:%M:%S')} {job.name}: {job.state} (exit {code})", flush=True)
        if ended:  # what is finished is on record even if this process is killed
            summarise(jobs, work, out)
        running = [j for j in jobs if j.state == "running"]
        waiting = [j for j in jobs if j.state == "waiting" and (not j.needs or by_name[j.needs].state == "done")]
        blocked = [j for j in jobs if j.state == "waiting" and j.needs and by_name[j.needs] not in paused
                   and by_name[j.needs].state in ("failed", "stopped")]
        for job in blocked:
            job.state = by_name[job.needs].state
        if finishing and not running:  # the ones kept are done: the paused go on (from their checkpoints)
            for job in paused:
                job.state = "waiting"
            finishing, waiting, paused = False, [*paused, *waiting], []
        if time.time() > budget_end - MARGIN_S / 2 or (not running and not waiting):
            stop_jobs(running)  # past their own time limit (an evaluation, say): stop; rows are kept
            for job in running:  # the call's log says so, as it does for a job that stopped itself
                print(f"{time.strftime('%H:%M:%S')} {job.name}: stopped by the budget", flush=True)
            return
        if finish_first and not finishing:
            paused = let_the_most_finish(running, work, gpus, budget_end - MARGIN_S)
            finishing = bool(paused)
            running = [j for j in running if j.state == "running"]
        if finishing:  # a job started now would only slow the ones being finished
            waiting = []
        for job in waiting[: gpus * per_gpu - len(running)]:
            load = [sum(1 for j in running if j.gpu == g) for g in range(gpus)]
            job.gpu = load.index(min(load))
            root = work / "runs" / job.name
            root.mkdir(parents=True, exist_ok=True)
            spec = root / "job.json"
            spec.write_text(json.dumps({"name": job.name, "stage": job.stage, "overrides": job.overrides,
                                        "needs": job.needs}))
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(job.gpu), "OMP_NUM_THREADS": "2"}
            with open(root / "log.txt", "a") as log:  # own session: a stop reaches its loader process too
                job.process = subprocess.Popen([sys.executable, __file__, "--job", str(spec), "--work", str(work),
                                                "--budget-end", str(budget_end)], stdout=log, stderr=subprocess.STDOUT,
                                               env=env, cwd=REPO, start_new_session=True)
            job.state = "running"
            job.pace = training_pace(job)
            running.append(job)
            print(f"{time.strftime('%H:%M:%S')} {job.name}: started on GPU {job.gpu}", flush=True)
        time.sleep(2)


def training_pace(job: Job) -> Pace | None:
    """A student or expert job's progress tracker (its stage's step count); None for the teacher's evaluation."""
    if job.stage == "teacher":
        return None
    from dcm.config import load_config
    from dcm.stages.distill import train_config
    steps = train_config(load_config(REPO / "params.yaml", job.overrides), job.stage).steps
    return Pace(total_steps=steps, evaluates=job.stage != "semantic")


def let_the_most_finish(running: list[Job], work: Path, gpus: int, stop_at: float) -> list[Job]:
    """Where the jobs sharing a GPU cannot all finish before `stop_at` at their pace, stop those that keep the
    most from finishing (finish_first.py); returns them (no job starts until the ones kept are done)."""
    for job in running:
        if job.pace is not None:
            job.pace.watch(last_logged_step(work / "runs" / job.name / CURVE))
    stopped = []
    for gpu in range(gpus):
        sharing = [job for job in running if job.gpu == gpu and job.state == "running"]
        remaining = {job.name: job.pace.remaining_s() if job.pace else None for job in sharing}
        if not sharing or None in remaining.values():  # a pace not yet known (or the teacher's rows): wait
            continue
        keep = jobs_to_keep(remaining, stop_at - time.time())
        if keep is None:
            continue
        for job in sharing:
            if job.name not in keep:
                stop_jobs([job])
                print(f"{time.strftime('%H:%M:%S')} {job.name}: stopped (its checkpoint continues it) so that "
                      f"{', '.join(sorted(keep))} can finish within the budget", flush=True)
                stopped.append(job)
    return stopped


def stop_jobs(jobs: list[Job]) -> None:
    """Stop running jobs (each in its own session, with its loader processes); their checkpoints continue them.
    All are asked at once and given STOP_WAIT_S together to finish their step and checkpoint, then killed."""
    alive = [job for job in jobs if job.state == "running" and job.process.poll() is None]
    for job in alive:
        os.killpg(job.process.pid, signal.SIGTERM)
    deadline = time.time() + STOP_WAIT_S
    for job in alive:
        try:
            job.process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait()
    for job in jobs:
        if job.state == "running":
            job.state = "stopped"


def terminated(signum, frame) -> None:
    """SIGTERM (device_claim.sh's `timeout`, say): stop like a budget that ran out, so the jobs stop too and
    matrix.json is written, instead of dying with the jobs left running."""
    raise SystemExit(STOPPED)


def final_runs(final: list[str], jobs: list[Job]) -> list[str] | None:
    """The `final` runs whose seed-0 students this call trained, once all of them are done; None while one
    is still to train, so that the final evaluation waits. Runs outside this call's --runs, or trained on an
    earlier machine, are left out (their students are not here)."""
    by_name = {job.name: job for job in jobs}
    ready = []
    for run in final:
        job = by_name.get(f"{run}-s0")
        if job is None or job.state == "earlier":
            where = "was trained on an earlier machine" if job else "is not among this call's runs"
            print(f"final evaluation: {run} at seed 0 {where}; leaving it out", flush=True)
        elif job.state != "done":
            return None
        else:
            ready.append(run)
    return ready


def final_evaluation(plan: dict, runs: list[str], base: list[str], work: Path, out: Path) -> None:
    """The given `final` runs at seed 0 together, one process, latency measured on an otherwise idle GPU."""
    from dcm.config import load_config
    from dcm.stages.evaluate import evaluate_students
    from dcm.stages.paths import OUTPUT_NAMES, output_folder
    folders = {}
    for run in runs:
        method = plan["runs"][run]["method"]
        job_cfg = load_config(REPO / "params.yaml", [*base, *paths(work, f"{run}-s0")])
        folders[run] = output_folder(job_cfg, OUTPUT_NAMES["detail" if method == "dcm" else method])
    cfg = load_config(REPO / "params.yaml", [*base, *plan.get("common", []), *plan.get("final_overrides", []),
                                             *shared_paths(work), f"evaluate.out_dir={work}/eval-final"])
    # The teacher is generated again rather than its rows reused: they were timed beside the training
    # jobs, and the speedup column must compare timings taken alike. Models load before their timer starts;
    # the plan's final_overrides set the timed generations per row (the median leaves out the cold first).
    result = evaluate_students(cfg, folders, work / "eval-final")
    for key, path in result["files"].items():
        if key in ("report", "grid"):
            shutil.copy2(path, out / f"final_{path.name}")
    (out / "final_metrics.json").write_text(json.dumps(result["metrics"], indent=2, default=float))


def summarise(jobs: list[Job], work: Path, out: Path) -> None:
    summary, tails, commit = {}, [], source_commit()
    for job in jobs:
        root = work / "runs" / job.name
        entry = {"stage": job.stage, "run": job.run, "seed": job.seed, "state": job.state, "overrides": job.overrides,
                 "source_commit": commit}
        if job.earlier is not None:
            entry = {**job.earlier, "state": "earlier"}
        elif (root / "result.json").is_file():
            entry["metrics"] = json.loads((root / "result.json").read_text())["metrics"]
        if job.earlier is None and (root / CURVE).is_file():
            entry["curve"] = read_curve(root / CURVE)
        log = root / "log.txt"
        if log.is_file():
            tails.append(f"== {job.name} ({job.state})\n" + "\n".join(log.read_text().splitlines()[-LOG_TAIL:]))
        summary[job.name] = entry
    (out / "matrix.json").write_text(json.dumps(summary, indent=1, default=float))
    (out / "matrix.log").write_text("\n".join(tails) + "\n")
    from safetensors.torch import load_file, save_file
    samples = {}
    for job in jobs:  # seed 0 of every run, the teacher once: the same prompts and noise in each
        path = work / "runs" / job.name / SAMPLES
        if job.seed == 0 and job.run and path.is_file():
            for row, clips in load_file(path).items():
                samples[row if row.startswith("teacher") else f"{job.run}/{row}"] = clips
    if samples:
        save_file(samples, str(out / "samples.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default=str(REPO / "research" / "plans" / "claim.yaml"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--work", default="/tmp/dcm-matrix")
    parser.add_argument("--teacher-parts", help="folder with teacher_model.tar.part* (research/run_stages.py)")
    parser.add_argument("--workers", type=int, default=8, help="shard writers")
    parser.add_argument("--per-gpu", type=int, default=6, help="jobs sharing one GPU")
    parser.add_argument("--budget-s", type=float, default=540, help="stop (with checkpoints) after this long")
    parser.add_argument("--runs", help="comma-separated subset of the plan's runs (run-sN: one seed of a run)")
    parser.add_argument("--final-s", type=float, default=120,
                        help="the least budget left, once every job is done, to start the final evaluation")
    parser.add_argument("--finish-first", action="store_true",
                        help="the last call of a machine (its work dir will not survive): where the jobs sharing a "
                             "GPU cannot all finish, pause some so that the others do (research/finish_first.py)")
    parser.add_argument("--earlier", help="a matrix.json from another machine: its finished jobs are kept, not re-run")
    parser.add_argument("--check", action="store_true",
                        help="resolve every job's settings and list the jobs (what --earlier carries, which semantic "
                             "expert each detail job starts from), then stop: here, before a device call is spent")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job in this process
    parser.add_argument("--budget-end", type=float, help=argparse.SUPPRESS)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    work = Path(args.work)
    if args.job:
        sys.exit(run_job(json.loads(Path(args.job).read_text()), work, args.budget_end))
    budget_end = time.time() + args.budget_s
    plan = yaml.safe_load(Path(args.plan).read_text())
    mistakes = plan_mistakes(plan)
    if mistakes:
        parser.error(f"{args.plan}: " + "; ".join(mistakes))
    if args.runs:
        try:
            plan["runs"] = chosen_runs(plan, args.runs.split(","))
        except ValueError as error:
            parser.error(f"{args.plan}: {error}")
    from dcm.config import ConfigError
    try:
        jobs = plan_jobs(plan, args.overrides, work)
        if args.earlier:  # before the set-up: a mismatch must not cost the device a minute of shards and latents
            carry_over(jobs, json.loads(Path(args.earlier).read_text()))
        if args.check:
            print(job_listing(jobs))
            return
    except ConfigError as error:
        parser.error(f"{args.plan}: {error}")
    out = Path(args.out or work / "out")
    out.mkdir(parents=True, exist_ok=True)
    import torch
    gpus = max(1, torch.cuda.device_count())
    prepare([*args.overrides, *plan.get("common", [])], work, args.teacher_parts, args.workers)
    print(f"{sum(j.state == 'waiting' for j in jobs)} jobs to run on {gpus} GPU(s) × {args.per_gpu} "
          f"({sum(j.state == 'earlier' for j in jobs)} finished on an earlier machine)", flush=True)
    final_done = work / "eval-final" / "metrics.json"
    signal.signal(signal.SIGTERM, terminated)
    try:  # training gets the whole budget: time kept back for the final evaluation is lost if jobs are unfinished
        schedule(jobs, work, out, gpus, args.per_gpu, budget_end, args.finish_first)
        final = final_runs(plan.get("final", []), jobs) if not final_done.is_file() else []
        if final and time.time() < budget_end - args.final_s:
            final_evaluation(plan, final, args.overrides, work, out)
        elif final:
            print(f"final evaluation: less than {args.final_s:.0f} s left; call again", flush=True)
    finally:
        stop_jobs(jobs)
        summarise(jobs, work, out)
    failed = [job.name for job in jobs if job.state == "failed"]
    if failed:  # running them again would fail again: their logs (matrix.log) say why
        raise SystemExit(f"jobs failed: {', '.join(failed)}; see matrix.log in {out}")
    left = [job.name for job in jobs if job.state not in ("done", "earlier")]
    if left or (final and not final_done.is_file()):
        print(f"work left: {', '.join(left) or 'the final evaluation'}", flush=True)
        sys.exit(STOPPED)


if __name__ == "__main__":
    main()
