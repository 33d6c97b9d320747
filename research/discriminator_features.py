"""How far apart the detail stage's "real" and "fake" teacher features are, next to how much they vary
(RESULTS.md, "Why the discriminator never learned"). Run inside a project that ran `make run` (it reads
data/latents, data/teacher and data/students/semantic; it writes only under --work):

    python research/discriminator_features.py [--work /tmp/dfeat] [-S key=value ...]

For one training batch of the detail stage it prints, per tapped block, |fake − real| / |real| and the
spread of the real features across samples and across tokens.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from dcm.config import DEFAULT_PARAMS, load_config
from dcm.data.latents import decode_precomputed
from dcm.data.stream import SampleStream
from dcm.stages.distill import build_student
from dcm.stages.paths import EMPTY_PROMPT
from dcm.stages.teacher import load_teacher
from dcm.train.consistency import ConsistencyDistillation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dfeat"))
    parser.add_argument("--params", default=str(DEFAULT_PARAMS))
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "students").mkdir(parents=True)
    base = load_config(args.params, args.overrides)
    shutil.copytree(Path(base.distill.out_dir) / "semantic", args.work / "students" / "semantic")
    cfg = load_config(args.params, [*args.overrides, f"distill.out_dir={args.work / 'students'}"])
    device = torch.device("cpu")
    teacher = load_teacher(cfg, device)
    teacher.transformer.requires_grad_(False)
    uncond = {k: v[None] for k, v in load_file(Path(cfg.precompute.dir) / EMPTY_PROMPT).items()}
    torch.manual_seed(cfg.seed)
    objective = ConsistencyDistillation(build_student(cfg, "detail", teacher, device), teacher, cfg, "detail", uncond)
    batch = next(SampleStream(cfg.precompute.dir, "train", cfg.distill.detail.shuffle_buffer, cfg.seed,
                              decode=decode_precomputed).batches(cfg.distill.detail.batch_size))
    objective.loss(batch, torch.Generator().manual_seed(cfg.seed), slice(0, len(batch)))
    fake, real, _ = objective.adversarial._pending[0]
    for index, (f, r) in enumerate(zip(fake, real)):
        apart = float((f - r).norm() / r.norm())
        samples = float((r - r.mean(0, keepdim=True)).norm() / r.norm())
        tokens = float((r - r.mean(1, keepdim=True)).norm() / r.norm())
        print(f"tap {index}: |fake - real| / |real| = {apart:.4f}; spread across samples {samples:.3f}, "
              f"across tokens {tokens:.3f}")


if __name__ == "__main__":
    main()
