"""Run the pipeline's stages without the orchestration stack, e.g. on a bare GPU box.

    python research/run_stages.py --out results/ -S profile=gpu [-S key=value ...] [--workers 14] \
        [--stages shard,teacher,precompute,semantic,detail,lcm,pcm,single,evaluate] [--teacher-parts DIR]

The stage functions are the ones `dvc repro` runs through Prefect; this driver only swaps the
orchestration for a process pool (shards) and prints progress instead of logging to MLflow. It writes
the teacher's metrics, a sample grid (PNG) and the trained teacher (tar, int8-encoded unless --pack-encoding
exact, split into 15 MB parts) to
--out, and for the later stages the students' metrics and the evaluation (metrics.json, report.md,
samples.png), each with its provenance (overrides, device, resolved configuration; run.json has the last
call's): `dcm import-runs <out>` then logs every stage
as an MLflow run of the project's tracking store. --teacher-parts unpacks a teacher written by an earlier
call instead of training one.

The teacher stage also runs data-parallel over every GPU of a machine (the global batch is split, the step
is the one-process step):

    torchrun --standalone --nproc_per_node 4 research/run_stages.py --stages teacher --resumable ...

--resumable: a teacher stopped by its time limit keeps its checkpoint, writes --out/teacher_stopped.txt
and exits with code 3 (torchrun reports that as a failure; the file says otherwise); the same command
continues it on the same machine. It also packs the EMA weights reached into --out/teacher_partial/ (int8 parts
and a record saying how far they got): `--continue-teacher <that folder>` continues from them on another machine
(fine-tuning from them for the steps still missing; the optimiser's moments start afresh). Without --resumable,
a stopped teacher is finished at the step reached (benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from dcm.config import ConfigError, config_to_dict, load_config
from dcm.data.sharding import finalize, plan_shards, write_shard
from dcm.errors import StoppedEarly
from dcm.models.packed import RECORD, check_finished, pack, read_record, unpack_verified
from dcm.ops.git import git_state
from dcm.train.distributed import init_from_env, rank_and_world
from dcm.stages.teacher import run_teacher_stage

REPO = Path(__file__).resolve().parents[1]
STAGES = ("shard", "teacher", "precompute", "semantic", "detail", "lcm", "pcm", "single", "evaluate")
STOPPED, STOPPED_FILE = 3, "teacher_stopped.txt"  # a --resumable teacher that its time limit stopped
PARTIAL_OUT = "teacher_partial"  # in --out: the stopped teacher's weights so far, packed


def shard(cfg, workers: int) -> None:
    jobs, skips = plan_shards(cfg)
    with get_context("spawn").Pool(workers) as pool:
        results = pool.map(partial(write_shard, cfg=cfg, out_dir=Path(cfg.shard.dir)), jobs)
    finalize(cfg, jobs, results, skips, Path(cfg.shard.dir))


def sample_grid(clips: np.ndarray, path: Path, frames: int) -> None:
    """One row per clip, `frames` evenly spaced frames per row."""
    picks = np.linspace(0, clips.shape[1] - 1, frames).round().astype(int)
    rows = [np.concatenate(list(clip[picks]), axis=1) for clip in clips]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/dcm-work")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--grid-rows", type=int, default=12)
    parser.add_argument("--grid-frames", type=int, default=8)
    parser.add_argument("--stages", default="shard,teacher", help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--teacher-parts", help="folder with teacher_model.tar.part* from an earlier call")
    parser.add_argument("--no-model", action="store_true", help="do not copy the trained teacher to --out")
    parser.add_argument("--pack-encoding", choices=["int8", "exact"], default="int8",
                        help="the teacher's parts: int8 (a quarter of the bytes, within 0.1 %% of its judge; "
                             "weights/README.md) or exact (its fp32 bytes)")
    parser.add_argument("--resumable", action="store_true",
                        help="a time-limited teacher keeps its checkpoint and exits with code 3")
    parser.add_argument("--continue-teacher", metavar="DIR",
                        help="a teacher_partial folder an earlier --resumable call returned: train on from its weights")
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"shard.dir={work}/shards", f"teacher.out_dir={work}/teacher",
                 f"teacher.checkpoint_dir={work}/checkpoints/teacher", f"precompute.dir={work}/latents",
                 f"distill.out_dir={work}/students", f"distill.checkpoint_dir={work}/checkpoints",
                 f"evaluate.out_dir={work}/eval", *args.overrides]
    cfg = load_config(REPO / "params.yaml", overrides)
    args.continued = None
    if args.continue_teacher:
        args.continued = continuation(Path(args.continue_teacher), cfg.teacher.toy.train.steps)
        overrides += args.continued["overrides"]
        cfg = load_config(REPO / "params.yaml", overrides)
    timings = {}
    stages = args.stages.split(",")
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    rank, world = init_from_env()
    # What `dcm import-runs` logs with these results: how they were made, whatever params.yaml says by then.
    provenance = {"overrides": args.overrides, "device": device_name(), "config": config_to_dict(cfg),
                  "source_commit": source_commit()}
    if rank == 0:
        (out / "run.json").write_text(json.dumps({**provenance, "stages": stages}, indent=2))
    if world > 1 and stages != ["teacher"]:
        parser.error("under torchrun only --stages teacher runs (shard first, in one process)")
    if "shard" in stages:
        start = time.perf_counter()
        shard(cfg, args.workers)
        timings["shard_s"] = time.perf_counter() - start
    if args.teacher_parts:
        unpack_teacher(Path(args.teacher_parts), work / "teacher")
    if "teacher" in stages:
        train_teacher(cfg, overrides, args, out, work, timings, rank, provenance)
    if rank == 0:
        later(cfg, stages, out, work, timings, provenance)


def source_commit() -> str:
    """The commit whose code makes these results, for `dcm import-runs` to tag them with: DCM_SOURCE_COMMIT where
    the copy has no git history (a device machine gets the working tree without .git: put the hash in the
    command), else git's HEAD (with "-dirty" for uncommitted changes to tracked files), else "unknown"."""
    if os.environ.get("DCM_SOURCE_COMMIT"):
        return os.environ["DCM_SOURCE_COMMIT"]
    state = git_state(REPO)
    return state["git_commit"] + ("-dirty" if state["git_dirty"] == "True" else "")


def device_name() -> str:
    """The GPU's name, or cpu (asked in a child process: CUDA stays uninitialised in this one)."""
    return subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name() "
                           "if torch.cuda.is_available() else 'cpu')"], capture_output=True, text=True).stdout.strip()


def continuation(partial: Path, total: int) -> dict:
    """How to continue the partly trained teacher packed in `partial` up to `total` steps: fine-tune from its
    weights for the steps it still lacks. Returns those overrides and what it started from."""
    record = read_record(partial)
    if "partial" not in record:
        raise SystemExit(f"{partial} holds a finished teacher, not a stopped one (its record has no 'partial'): "
                         "install it with --teacher-parts, or fine-tune from it with -S teacher.toy.init=finetune")
    reached = record["partial"]["steps"]
    if reached >= total:
        raise SystemExit(f"{partial} already reached step {reached} of the {total} asked (teacher.toy.train.steps): "
                         "nothing to continue; ask for more steps")
    print(f"teacher: continuing {partial} from step {reached} to {total}", flush=True)
    return {"steps_before": reached, "total": total, "folder": str(partial), "content_hash": record["content_hash"],
            "overrides": ["teacher.toy.init=finetune", f"teacher.toy.pretrained={partial}",
                          f"teacher.toy.train.steps={total - reached}"]}


def unpack_teacher(parts: Path, teacher_dir: Path) -> None:
    """The teacher folder from tar parts (hash checked against its record), plus the manifest the teacher stage
    would have written."""
    from dcm.io import write_json_atomic
    try:
        check_finished(parts)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    record = unpack_verified(parts, teacher_dir / "model")
    write_json_atomic(teacher_dir / "manifest.json", {"family": "toy", "path": "model", "content_hash": record["content_hash"]})


def later(cfg, stages: list[str], out: Path, work: Path, timings: dict, provenance: dict) -> None:
    """precompute, the distillation stages and evaluate, in that order, each timed."""
    from dcm.stages.evaluate import run_evaluate_stage
    from dcm.stages.precompute import run_precompute_stage
    from dcm.stages.distill import run_distill_stage

    curve: list[dict] = []

    def on_log(step: int, metrics: dict) -> None:
        curve.append({"step": step, **metrics})
        print(step, {k: round(v, 4) for k, v in metrics.items()}, flush=True)

    for stage in [s for s in STAGES[2:] if s in stages]:
        start = time.perf_counter()
        curve.clear()
        if stage == "precompute":
            run_precompute_stage(cfg)
        elif stage == "evaluate":
            result = run_evaluate_stage(cfg)
            for path in result["files"].values():
                shutil.copy2(path, out / f"eval_{path.name}")
            (out / "eval_metrics.json").write_text(json.dumps(result["metrics"], indent=2))
            print((out / "eval_report.md").read_text(), flush=True)
        else:
            result = run_distill_stage(cfg, stage, on_log=on_log)
            kept = {**{k: result[k] for k in ("folder", "metrics", "losses")}, "curve": list(curve),
                    "provenance": provenance}
            (out / f"{stage}_metrics.json").write_text(json.dumps(kept, indent=2, default=str))
            print(stage, result["metrics"], flush=True)
        timings[f"{stage}_s"] = time.perf_counter() - start
        print(f"{stage}: {timings[f'{stage}_s']:.0f} s", flush=True)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))


def train_teacher(cfg, overrides: list[str], args, out: Path, work: Path, timings: dict, rank: int,
                  provenance: dict) -> None:
    curve = []

    def on_log(step: int, metrics: dict) -> None:
        curve.append({"step": step, **metrics})
        if rank == 0:
            print(step, {k: round(v, 4) for k, v in metrics.items()}, flush=True)

    start = time.perf_counter()
    (out / STOPPED_FILE).unlink(missing_ok=True)
    try:
        result = run_teacher_stage(cfg, on_log=on_log)
    except StoppedEarly as stopped:
        print(stopped, flush=True)
        if args.resumable or rank_and_world()[1] > 1:  # ranks cannot re-run alone
            if rank == 0:
                pack_partial(cfg, args, out, work, provenance, curve)
                (out / STOPPED_FILE).write_text(f"{stopped}\n")
            sys.exit(STOPPED)
        # benchmarks: finish at the step reached
        reached = json.loads(sorted((work / "checkpoints/teacher").glob("step-*"))[-1].joinpath("state.json").read_text())["step"]
        cfg = load_config(REPO / "params.yaml", [*overrides, f"teacher.toy.train.steps={reached}"])
        result = run_teacher_stage(cfg, on_log=on_log)
    timings["teacher_s"] = time.perf_counter() - start
    if rank != 0:  # data parallel: rank 0 exported and judged the teacher
        return
    report = {"device": provenance["device"], "overrides": args.overrides, "provenance": provenance, **timings,
              **result["manifest"],
              "grid_prompts": [p["caption"] for p in result["prompts"][: args.grid_rows]], "curve": curve}
    if args.continued is not None:  # fine-tuned from a stopped teacher: the steps of both runs together
        report["continued"] = {k: v for k, v in args.continued.items() if k != "overrides"}
        report["total_steps"] = args.continued["steps_before"] + result["manifest"]["steps"]
    if not args.no_model:  # the record carries the hash of what unpacking the parts gives (int8: decoded weights)
        packed_hash = pack(work / "teacher" / "model", out, work / "teacher_model.tar", args.pack_encoding)
        report |= {"content_hash": packed_hash, "encoding": args.pack_encoding,
                   "trained_content_hash": result["manifest"]["content_hash"]}
    (out / "teacher_metrics.json").write_text(json.dumps(report, indent=2, default=str))
    sample_grid(result["clips"][: args.grid_rows], out / "teacher_samples.png", args.grid_frames)
    print(json.dumps({k: v for k, v in report.items() if k not in ("sampling", "curve", "provenance")}, default=str), flush=True)


def pack_partial(cfg, args, out: Path, work: Path, provenance: dict, curve: list[dict]) -> None:
    """The stopped teacher's EMA weights (teacher stage: checkpoint_dir/partial) packed into --out/teacher_partial
    with a record of how far they got, counting the steps of a run they continue."""
    from dcm.stages.paths import TEACHER_MODEL
    from dcm.stages.teacher import PARTIAL, PARTIAL_PROGRESS
    partial = Path(cfg.teacher.checkpoint_dir) / PARTIAL
    progress = json.loads((partial / PARTIAL_PROGRESS).read_text())
    before = args.continued["steps_before"] if args.continued else 0
    target = out / PARTIAL_OUT
    target.mkdir(parents=True, exist_ok=True)
    packed_hash = pack(partial / TEACHER_MODEL, target, work / "teacher_partial.tar", args.pack_encoding)
    record = {"partial": {"steps": before + progress["steps"], "of": before + progress["of"]},
              "content_hash": packed_hash, "encoding": args.pack_encoding, "steps": before + progress["steps"],
              "finetuned_from": progress["finetuned_from"], "metrics": {}, "device": provenance["device"],
              "overrides": args.overrides, "provenance": provenance, "curve": curve,
              **({"continued": {k: v for k, v in args.continued.items() if k != "overrides"}} if args.continued else {})}
    (target / RECORD).write_text(json.dumps(record, indent=2, default=str))
    print(f"teacher: weights at step {record['steps']} of {record['partial']['of']} packed in {target}; "
          f"--continue-teacher {target} continues them elsewhere", flush=True)


if __name__ == "__main__":
    main()
