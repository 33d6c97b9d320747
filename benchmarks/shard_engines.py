"""The shard flow on its two Prefect engines, 1 writer vs N: Prefect's thread pool vs a local Dask
cluster of worker processes (prefect-dask), on the shapes domain.

    python benchmarks/shard_engines.py [--workers 2] [--clips 2048]

Each configuration runs the real flow (`flows.shard.run`) into a fresh folder; the figure is the flow's
own `seconds` metric (planning, writing every shard, the manifest), which leaves out the fixed
start-up of Prefect, MLflow and the Dask cluster (reported separately as wall time).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from dcm.ops.env import apply_runtime_defaults
from dcm.ops.flows.shard import run

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clips", type=int, default=2048)
    args = parser.parse_args()
    apply_runtime_defaults(REPO)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.clips} shapes clips")
    print("| engine | writers | clips | flow s | clips/s | vs 1 writer | wall s (with start-up) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("threads", "dask"):
            base = None
            for workers in (1, args.workers):
                folder = Path(tmp) / f"{engine}-{workers}"
                overrides = [f"shard.dir={folder}", f"tracking.uri=sqlite:///{Path(tmp) / 'mlflow.db'}",
                             f"tracking.artifacts={Path(tmp) / 'artifacts'}", f"data.shapes.train_samples={args.clips}",
                             f"shard.engine={engine}", f"shard.workers={workers}"]
                start = time.perf_counter()
                metrics = run(str(REPO / "params.yaml"), overrides)["metrics"]
                wall = time.perf_counter() - start
                rate = metrics["clips_written"] / metrics["seconds"]
                base = base or rate
                print(f"| {engine} | {workers} | {metrics['clips_written']} | {metrics['seconds']:.2f} | {rate:.1f} | "
                      f"{rate / base:.2f}× | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
