"""Stage `shard`: clips (procedural shapes or your own videos) → WebDataset tar shards + a manifest.

The work is in dcm.data.sharding: plan the shards, write each one (a job), finalize. run_shard_stage runs
them in one process; the flow runs the same steps with its writers in parallel.
"""

from __future__ import annotations

from pathlib import Path

from dcm.config import DCMConfig
from dcm.data.sharding import ShardJob, ShardResult, finalize, plan_shards, write_shard
from dcm.progress import tracked
from dcm.stages.checks import check_geometry
from dcm.stages.spec import Output, StageSpec

__all__ = ["SPEC", "ShardJob", "ShardResult", "finalize", "plan", "run_shard_stage", "write_shard"]

SPEC = StageSpec(
    name="shard", command="dcm shard", flow="dcm.ops.flows.shard",
    params=("seed", "data", "shard.samples_per_shard", "shard.videos_per_shard", "shard.workers", "shard.engine",
            "shard.png_compression"),
    deps=("${data.videos.dir}",),
    outs=(Output("${shard.dir}", persist=True,
                 note="finished shards survive a killed run; the stage reuses or removes them itself"),))


def plan(cfg: DCMConfig, videos_dir: Path | None = None) -> tuple[list[ShardJob], list]:
    """The shards to write, after the checks that refuse a config no later stage could run."""
    check_geometry(cfg)
    return plan_shards(cfg, videos_dir)


def run_shard_stage(cfg: DCMConfig, out_dir: Path | None = None, videos_dir: Path | None = None) -> dict:
    """The whole stage in one process (the flow runs the same three steps with parallel jobs)."""
    out_dir = Path(out_dir or cfg.shard.dir)
    jobs, skips = plan(cfg, videos_dir)
    results = [write_shard(job, cfg, out_dir, videos_dir) for job in tracked(jobs, "shards", "shard")]
    return finalize(cfg, jobs, results, skips, out_dir)
