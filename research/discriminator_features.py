"""How far apart the detail stage's "real" and "fake" teacher features are, next to how much they vary
(RESULTS.md, "Why the discriminator never learned"). Run inside a project that ran `make run` (it reads
data/latents, data/teacher and data/students/semantic; it writes only under --work):

    python research/discriminator_features.py [--work /tmp/dfeat] [-S key=value ...]

For one training batch of the detail stage it prints, per tapped block, |fake − real| / |real| and the
spread of the real features across samples and across tokens.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dcm.config import DEFAULT_PARAMS
from dcm.data.latents import decode_precomputed
from dcm.data.stream import SampleStream
from discriminator_probe import detail_objective  # research/ is the script's folder, first on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dfeat"))
    parser.add_argument("--params", default=str(DEFAULT_PARAMS))
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg, objective = detail_objective(args.work, args.params, args.overrides)
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
