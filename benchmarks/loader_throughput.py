"""Does the data loader keep up? Samples/s one prefetch worker decodes from the precompute stage's
WebDataset shards vs samples/s the semantic training step consumes, measured in the same run.

    python benchmarks/loader_throughput.py [--batches 30] [--steps 12] [-S key=value ...]

Needs the precompute stage's output (dvc repro precompute). The loader figure is the exact stream the
trainer reads (SampleStream + decode_precomputed: tar read, safetensors parse, finiteness check), on
one thread; the trainer figure is the median step of a short semantic run in a temporary folder.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from distill_step_time import step_times  # this folder's distillation step benchmark

from dcm.config import load_config
from dcm.data.latents import decode_precomputed
from dcm.data.stream import SampleStream
from dcm.ops.env import apply_runtime_defaults

REPO = Path(__file__).resolve().parents[1]


def loader_rate(cfg, batches: int, batch_size: int) -> tuple[float, float]:
    """(samples/s, MB/s of decoded tensors) over `batches` batches after one warm-up batch."""
    stream = SampleStream(cfg.precompute.dir, "train", cfg.distill.semantic.shuffle_buffer, cfg.seed,
                          decode=decode_precomputed)
    iterator = stream.batches(batch_size)
    next(iterator)
    start, nbytes = time.perf_counter(), 0
    for _ in range(batches):
        for sample in next(iterator):
            nbytes += sum(t.numel() * t.element_size() for t in sample["tensors"].values())
    seconds = time.perf_counter() - start
    return batches * batch_size / seconds, nbytes / seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    apply_runtime_defaults(REPO)
    cfg = load_config(REPO / "params.yaml", args.overrides)
    batch = cfg.distill.semantic.batch_size
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    samples_s, mb_s = loader_rate(cfg, args.batches, batch)
    print(f"machine: {machine}; batch {batch}; loader (one thread): {samples_s:.1f} samples/s, {mb_s:.1f} MB/s")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("online", "trajectory"):
            step = statistics.median(step_times(args.overrides, "semantic", args.steps, mode, Path(tmp)))
            consumed = batch / step
            print(f"semantic step, teacher {mode}: {step * 1000:.0f} ms = {consumed:.1f} samples/s consumed; "
                  f"loader / consumption = {samples_s / consumed:.1f}×", flush=True)


if __name__ == "__main__":
    main()
