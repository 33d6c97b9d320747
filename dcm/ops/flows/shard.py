"""Flow `shard`: plan the shards, write them in parallel tasks, then the manifest, MLflow run and report."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from dcm.progress import tracked
from dcm.config import DEFAULT_PARAMS, DCMConfig, config_to_dict, load_config
from dcm.ops.tracking import stage_run
from dcm.stages.paths import MANIFEST
from dcm.stages.shard import ShardJob, ShardResult, finalize, plan, write_shard

IO_RETRIES = 2
IO_RETRY_DELAY_S = 2


def _retry_on_io_error(task, task_run, state) -> bool:
    """Retry flaky storage, not bad inputs: undecodable videos are already skipped inside the task."""
    return isinstance(state.result(raise_on_failure=False), OSError)


@task(retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S, retry_condition_fn=_retry_on_io_error,
      cache_policy=NO_CACHE, task_run_name="write-{job.split}-{job.index}")
def write_shard_task(job: ShardJob, cfg: DCMConfig, out_dir: Path, videos_dir: Path | None) -> ShardResult:
    return write_shard(job, cfg, out_dir, videos_dir)


def report_markdown(manifest: dict, seconds: float, reused: int) -> str:
    lines = ["# Shard stage", "",
             f"source **{manifest['source']}**, clips {manifest['clip']['frames']}×"
             f"{manifest['clip']['height']}×{manifest['clip']['width']}, {seconds:.1f} s, "
             f"{reused} shard(s) reused from an earlier run", "",
             "| split | shards | clips |", "|---|---|---|"]
    for split, entry in manifest["splits"].items():
        lines.append(f"| {split} | {len(entry['shards'])} | {entry['samples']} |")
    lines += ["", f"**Skipped inputs: {len(manifest['skipped'])}**", ""]
    if manifest["skipped"]:
        lines += ["| input | reason |", "|---|---|"]
        lines += [f"| {s['path']} | {s['reason']} |" for s in manifest["skipped"]]
    return "\n".join(lines)


@flow(name="shard", log_prints=True)
def shard_flow(params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict:
    logger = get_run_logger()
    cfg = load_config(params, overrides)
    out_dir, videos_dir = Path(cfg.shard.dir), Path(cfg.data.videos.dir)
    with stage_run(cfg.tracking, "shard", {"seed": cfg.seed, "data": config_to_dict(cfg.data),
                                           "shard": config_to_dict(cfg.shard)}) as run:
        start = time.perf_counter()
        jobs, skips = plan(cfg, videos_dir)
        logger.info("%d shard(s) planned from %s input", len(jobs), cfg.data.source)
        futures = write_shard_task.map(jobs, cfg=unmapped(cfg), out_dir=unmapped(out_dir),
                                       videos_dir=unmapped(videos_dir))
        results = [future.result() for future in tracked(futures, "shards", "shard")]  # in planned order
        manifest = finalize(cfg, jobs, results, skips, out_dir)
        seconds = time.perf_counter() - start
        written = [r for r in results if not r.reused]
        clips = sum(entry["samples"] for entry in manifest["splits"].values())
        new_clips = sum(r.samples for r in written)
        metrics = {"clips": clips, "clips_written": new_clips, "clips_skipped": len(manifest["skipped"]),
                   "shards": len(results), "shards_reused": len(results) - len(written), "seconds": seconds,
                   "clips_per_s": new_clips / seconds if seconds > 0 else 0.0}
        run.log_metrics(metrics)
        run.log_artifact(out_dir / MANIFEST)
        create_markdown_artifact(report_markdown(manifest, seconds, len(results) - len(written)),
                                 key="shard-report", description="Shard stage: counts and skipped inputs")
        logger.info("%d clips in %s (%d written now, %.1f clips/s); MLflow run %s", clips, out_dir,
                    new_clips, metrics["clips_per_s"], run.run_id)
    return {"manifest": manifest, "metrics": metrics, "run_id": run.run_id}


def task_runner(cfg: DCMConfig):
    """`shard.workers` writers on the engine `shard.engine` names. Threads share the GIL (PNG encoding
    and shapes rendering hold it much of the time); Dask runs each writer in its own process."""
    if cfg.shard.engine == "dask":
        from prefect_dask import DaskTaskRunner
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.shard.workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=cfg.shard.workers)


def run(params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict:
    """Run the flow with as many parallel shard writers as the config asks for."""
    cfg = load_config(params, overrides)
    saved = dict(os.environ)
    try:
        return shard_flow.with_options(task_runner=task_runner(cfg))(params=params, overrides=overrides)
    finally:
        # Dask's nanny sets OMP/MKL/OPENBLAS_NUM_THREADS=1 in *this* process's environment before it spawns
        # workers (distributed.nanny.pre-spawn-environ); left there, every later child process would run
        # torch on one thread (and CPU results depend on the thread count). Put the environment back.
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    run()
