"""Where a teacher training step spends its time: data assembly vs the model step (one GPU).

    python research/profile_teacher_step.py -S profile=gpu -S shard.dir=...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dcm.config import load_config
from dcm.data.stream import SampleStream
from dcm.models.toy import ToyFamily
from dcm.train.flow_matching import FlowMatchingPretraining

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--trace", action="store_true", help="print torch.profiler's top operators")
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(REPO / "params.yaml", args.overrides)
    train = cfg.teacher.toy.train
    batches = SampleStream(cfg.shard.dir, "train", train.shuffle_buffer, cfg.seed).batches(train.batch_size)
    next(batches)
    start = time.perf_counter()
    held = [next(batches) for _ in range(args.steps)]
    data_s = (time.perf_counter() - start) / args.steps
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = ToyFamily.build(cfg, 0)
    teacher.transformer.to(device)
    method = FlowMatchingPretraining(teacher, cfg)
    optimizer = torch.optim.AdamW(teacher.transformer.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16")
    for phase in ("warmup", "timed"):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in held:
            with autocast:
                loss, _ = method.loss(batch, generator, slice(0, len(batch)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_s = (time.perf_counter() - start) / len(held)
    if args.trace:
        with torch.profiler.profile() as prof:
            for batch in held[:3]:
                with autocast:
                    loss, _ = method.loss(batch, generator, slice(0, len(batch)))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            torch.cuda.synchronize() if device.type == "cuda" else None
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))
    print(f"batch {train.batch_size}: data assembly {data_s * 1000:.1f} ms/batch, model step (with input "
          f"conversion) {step_s * 1000:.1f} ms/step on {device}")


if __name__ == "__main__":
    main()
