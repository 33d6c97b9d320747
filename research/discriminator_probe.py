"""Can the detail stage's discriminator tell real from fake at all? (RESULTS.md, issue 21)

The generator held fixed (the semantic expert, as the detail stage starts), this collects the teacher
features the detail stage's heads would see — fake: the student's prediction, real: the consistency
target or the training clip (distill.discriminator.real), both re-noised the stage's way — for
`--batches` training batches, then trains fresh heads (distill.discriminator's architecture, lr and betas)
on most of them for `--epochs` epochs and reports hinge and accuracy on the held-out rest: per token (as the
stage logs it; and apart on structured tokens, where the clean clip has an edge or texture, and flat ones, and
at each segment edge the samples sit at, for a phased detail expert) and per clip (the sign of a clip's mean
logit). Heads that stay at chance here cannot learn in the stage either. Run inside a project that ran
`make run` (it reads data/latents, data/teacher and data/students/semantic, and writes only under --work):

    python research/discriminator_probe.py [--batches 48] [--epochs 30] [-S distill.discriminator.real=data ...]

--pool FILE keeps the collected features: a later call with the same FILE (and the same real/batches) trains
other heads (lr, width, betas) on exactly the same features without collecting them again.
"""

from __future__ import annotations

import argparse
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dcm.config import DEFAULT_PARAMS, load_config
from dcm.data.latents import decode_precomputed, stack
from dcm.data.stream import SampleStream
from dcm.losses import clip_accuracy, discriminator_accuracy, hinge_terms
from dcm.models.discriminator import Discriminator
from dcm.schedule import END
from dcm.stages.distill import build_student
from dcm.stages.paths import EMPTY_PROMPT
from dcm.stages.teacher import load_teacher
from dcm.train.adversarial import judge_pair, train_heads
from dcm.train.consistency import ConsistencyDistillation


def detail_objective(work: Path, params: str, overrides: list[str]):
    """(config, the detail stage's objective at its start) on CPU, with the project's semantic expert copied
    under `work` (nothing else of the project is written)."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "students").mkdir(parents=True)
    base = load_config(params, overrides)
    shutil.copytree(Path(base.distill.out_dir) / "semantic", work / "students" / "semantic")
    cfg = load_config(params, [*overrides, f"distill.out_dir={work / 'students'}"])
    teacher = load_teacher(cfg, "cpu")
    teacher.transformer.requires_grad_(False)
    uncond = {k: v[None] for k, v in load_file(Path(cfg.precompute.dir) / EMPTY_PROMPT).items()}
    torch.manual_seed(cfg.seed)
    return cfg, ConsistencyDistillation(build_student(cfg, "detail", teacher, "cpu"), teacher, cfg, "detail", uncond)


def structured_tokens(latents: torch.Tensor, grid: tuple[int, int, int], threshold: float) -> torch.Tensor:
    """(B, frames, rows, cols) True where the clean clip's patch under a token of the token `grid` is not flat
    (its values spread over more than `threshold`): an object's edge or texture. Flat tokens are the background
    and plain objects' insides (the suspicion that they stay at chance was refuted: RESULTS.md)."""
    b, c, t, h, w = latents.shape
    pt, ph, pw = t // grid[0], h // grid[1], w // grid[2]
    patches = latents.float().reshape(b, c, grid[0], pt, grid[1], ph, grid[2], pw)
    return patches.std(dim=(1, 3, 5, 7)) > threshold


def recording_edges(adversarial) -> list[torch.Tensor]:
    """The segment edge of every sample the adversarial loss judges, appended per call: the stage does not keep
    them, and a phased detail expert's heads are scored apart at each edge."""
    judged, seen = adversarial.generator_loss, []

    def generator_loss(pred, target, real, edges, *rest, **named):
        seen.append(edges.clone())
        return judged(pred, target, real, edges, *rest, **named)

    adversarial.generator_loss = generator_loss
    return seen


def collect(cfg, objective, batches: int, flat_below: float) -> tuple[list, list[tuple]]:
    """(heads' input widths, [(fake features, real features, token grid, structured-token mask, sample edges)]
    per training batch)."""
    stream = SampleStream(cfg.precompute.dir, "train", cfg.distill.detail.shuffle_buffer, cfg.seed,
                          decode=decode_precomputed).batches(cfg.distill.detail.batch_size)
    generator, pool = torch.Generator().manual_seed(cfg.seed), []
    edges = recording_edges(objective.adversarial)
    for _ in range(batches):
        batch = next(stream)
        with torch.no_grad():
            objective.loss(batch, generator, slice(0, len(batch)))
        latents = stack(batch, "latents", "cpu")
        mask = structured_tokens(latents, objective.teacher.token_grid(tuple(latents.shape)), flat_below)
        pool.extend((*pending, mask, edges.pop(0)) for pending in objective.adversarial._pending)
        objective.adversarial._pending = []
    widths = [feature.shape[-1] for feature in pool[0][0]]
    return widths, pool


def save_pool(path: Path, pool: list[tuple]) -> None:
    """The collected features as safetensors: per batch its fake and real taps, token grid, token mask and the
    samples' segment edges."""
    tensors = {}
    for i, (fake, real, grid, mask, edges) in enumerate(pool):
        tensors |= {f"{i}/fake/{k}": f.clone() for k, f in enumerate(fake)}
        tensors |= {f"{i}/real/{k}": r.clone() for k, r in enumerate(real)}
        tensors |= {f"{i}/grid": torch.tensor(grid), f"{i}/mask": mask.contiguous(), f"{i}/edges": edges}
    save_file(tensors, path)


def load_pool(path: Path) -> tuple[list[int], list[tuple]]:
    """(heads' input widths, pool) as save_pool wrote them."""
    tensors = load_file(path)
    batches, taps = len([k for k in tensors if k.endswith("/grid")]), len([k for k in tensors if k.startswith("0/fake/")])
    pool = [([tensors[f"{i}/fake/{k}"] for k in range(taps)], [tensors[f"{i}/real/{k}"] for k in range(taps)],
             tuple(tensors[f"{i}/grid"].tolist()), tensors[f"{i}/mask"], tensors[f"{i}/edges"])
            for i in range(batches)]
    return [feature.shape[-1] for feature in pool[0][0]], pool


def masked_accuracy(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor], mask: torch.Tensor) -> float | None:
    """discriminator_accuracy over the tokens `mask` selects only (None when it selects none)."""
    if not mask.any():
        return None
    return float(discriminator_accuracy([r[mask] for r in real_logits], [f[mask] for f in fake_logits]))


def edge_name(edge: int) -> str:
    return "end" if edge == END else f"edge{edge}"


def evaluate(heads: Discriminator, pool: list[tuple]) -> dict[str, float]:
    """Hinge and accuracies over `pool`, token accuracy also apart at each segment edge (`accuracy_end`,
    `accuracy_edge11`, …: where a phased detail expert's samples sit)."""
    values: dict[str, list[float]] = {key: [] for key in ("hinge", "token_accuracy", "clip_accuracy",
                                                           "structured_accuracy", "flat_accuracy", "structured_share")}
    with torch.no_grad():
        for fake, real, grid, mask, edges in pool:
            real_logits, fake_logits = judge_pair(heads, fake, real, grid)
            on_real, on_fake = hinge_terms(real_logits, fake_logits)
            batch = {"hinge": float(on_real + on_fake),
                     "token_accuracy": float(discriminator_accuracy(real_logits, fake_logits)),
                     "clip_accuracy": float(clip_accuracy(real_logits, fake_logits)),
                     "structured_accuracy": masked_accuracy(real_logits, fake_logits, mask),
                     "flat_accuracy": masked_accuracy(real_logits, fake_logits, ~mask),
                     "structured_share": float(mask.float().mean())}
            for edge in edges.unique().tolist():
                batch[f"accuracy_{edge_name(edge)}"] = masked_accuracy(real_logits, fake_logits, edges == edge)
            for key, value in batch.items():
                if value is not None:  # a batch without flat (or structured) tokens says nothing of them
                    values.setdefault(key, []).append(value)
    return {key: sum(found) / len(found) if found else float("nan") for key, found in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dprobe"))
    parser.add_argument("--params", default=str(DEFAULT_PARAMS))
    parser.add_argument("--batches", type=int, default=48)
    parser.add_argument("--held-out", type=int, default=12, help="batches kept out of the heads' training")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--flat-below", type=float, default=0.02,
                        help="a token whose clean patch spreads less than this is flat (background, plain inside)")
    parser.add_argument("--pool", type=Path, help="features cached here: read when the file exists, else written")
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if not 1 <= args.held_out < args.batches:
        parser.error("--held-out must be at least 1 and leave batches to train on")
    if args.pool is not None and args.pool.exists():
        cfg = load_config(args.params, args.overrides)
        widths, pool = load_pool(args.pool)
        if len(pool) != args.batches:
            parser.error(f"{args.pool} holds {len(pool)} batches, not --batches {args.batches}: delete it or match")
        print(f"features read from {args.pool}", flush=True)
    else:
        cfg, objective = detail_objective(args.work, args.params, args.overrides)
        widths, pool = collect(cfg, objective, args.batches, args.flat_below)
        if args.pool is not None:
            save_pool(args.pool, pool)
    train, held_out = pool[: -args.held_out], pool[-args.held_out:]
    disc = cfg.distill.discriminator
    torch.manual_seed(cfg.seed)
    heads = Discriminator(widths, disc)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=disc.lr, betas=disc.betas, weight_decay=disc.weight_decay)
    print(f"real = {disc.real}, lr {disc.lr}, {len(train)} training and {len(held_out)} held-out batches of "
          f"{cfg.distill.detail.batch_size}", flush=True)
    print("epoch 0 held-out", {k: round(v, 4) for k, v in evaluate(heads, held_out).items()}, flush=True)
    for epoch in range(1, args.epochs + 1):
        for fake, real, grid, *_ in train:  # one step of the stage's own heads update per batch (fp32 on CPU)
            train_heads(heads, optimizer, [(fake, real, grid)], 1, nullcontext)
        if epoch % max(1, args.epochs // 10) == 0 or epoch == args.epochs:
            print(f"epoch {epoch} train", {k: round(v, 4) for k, v in evaluate(heads, train).items()},
                  "held-out", {k: round(v, 4) for k, v in evaluate(heads, held_out).items()}, flush=True)


if __name__ == "__main__":
    main()
