"""The detail stage's adversarial terms (DESIGN.md §2): hinge GAN on the frozen teacher's block features
plus feature matching through the teacher's output projection, and the discriminator's own step.

During the first discriminator.warmup_steps steps the heads train but their hinge term does not reach the
student (feature matching does). Fake = the student's prediction; real = the consistency target (the
reference code) or, with discriminator.real = data, the training clip at the same edge. Both are pushed from
the segment edge they sit at (the end of the trajectory, or a detail phase's edge) up to one random node sigma
above it per sample (within the phase that jumps to that edge, as PCM's reference draws it, or anywhere up to
κ: discriminator.noise_window), with the same noise, then read by the frozen teacher with block taps. Feature
matching pulls the prediction's features towards the target's.
"""

from __future__ import annotations

from collections import deque
from contextlib import AbstractContextManager
from typing import Callable

import torch

from dcm.config import DCMConfig
from dcm.losses import clip_accuracy, discriminator_accuracy, feature_matching, hinge_generator, hinge_terms
from dcm.models.discriminator import Discriminator
from dcm.schedule import euler_nodes, method_edges, nodes_above, phase_tops, renoise
from dcm.train.distributed import mean_across
from dcm.train.loop import bf16_autocast, device_generator


def split_gradient(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Callable[[], torch.Tensor]]:
    """Two aliases of `pred`, one for the consistency terms and one for the adversarial ones, and a callable
    that gives, once backward has run, the adversarial terms' share of the gradient reaching `pred`
    (|g_adv| / (|g_adv| + |g_consistency|)): how much of the generator's update the GAN drives."""
    norms = torch.zeros(2, device=pred.device)
    own, adversarial = pred.view_as(pred), pred.view_as(pred)

    def keep(index: int):
        def hook(grad: torch.Tensor) -> None:  # returns None: the gradient passes unchanged
            norms[index].copy_(grad.detach().float().norm())
        return hook

    if pred.requires_grad:
        own.register_hook(keep(0))
        adversarial.register_hook(keep(1))
    return own, adversarial, lambda: norms[1] / norms.sum().clamp_min(torch.finfo(torch.float32).tiny)


def judge_pair(discriminator: Discriminator, fake: list[torch.Tensor], real: list[torch.Tensor],
               grid: tuple[int, int, int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The heads' logits on real and on fake tapped features, both through the heads in one call."""
    logits = discriminator([torch.cat([r, f]) for r, f in zip(real, fake)], grid)
    count = len(real[0])
    return [l[:count] for l in logits], [l[count:] for l in logits]


def train_heads(discriminator: Discriminator, optimizer: torch.optim.Optimizer, pending: list[tuple], updates: int,
                compute: Callable[[], AbstractContextManager]) -> torch.Tensor:
    """`updates` hinge steps of the heads on `pending` [(fake features, real features, token grid)] (one entry
    per micro-batch), each forward under a fresh `compute()` context (the training precision, with autocast's
    weight cache off: every update must read the weights the previous one stepped). Returns the first pass's
    (hinge on real, hinge on fake, token accuracy, clip accuracy): on features the heads have not trained on."""
    health = torch.zeros(4, device=pending[0][0][0].device)
    for update in range(updates):
        optimizer.zero_grad(set_to_none=True)  # the first also drops what the generator loss left on the heads
        for fake, real, grid in pending:
            with compute():
                real_logits, fake_logits = judge_pair(discriminator, fake, real, grid)
            on_real, on_fake = hinge_terms(real_logits, fake_logits)
            ((on_real + on_fake) / len(pending)).backward()
            if update == 0:
                health += torch.stack([on_real.detach(), on_fake.detach(), discriminator_accuracy(real_logits, fake_logits),
                                       clip_accuracy(real_logits, fake_logits)]) / len(pending)
        optimizer.step()
    return health


class AdversarialLoss:
    def __init__(self, teacher, cfg: DCMConfig, device: torch.device):
        self.teacher, self.cfg = teacher, cfg
        disc = cfg.distill.discriminator
        taps = len(teacher.blocks()[disc.tap_every - 1::disc.tap_every])
        if taps == 0:
            raise ValueError(f"distill.discriminator.tap_every={disc.tap_every} taps no block of a teacher with "
                             f"{len(teacher.blocks())} blocks")
        self.discriminator = Discriminator([teacher.feature_width()] * taps, disc).to(device)
        self.optimizer: torch.optim.Optimizer | None = None  # built when the loop asks, after it sharded the heads
        self.detail_sigmas = euler_nodes(cfg.schedule)[: cfg.distill.kappa + 1].float()
        self.detail_edges = method_edges("detail", cfg.schedule, cfg.distill)
        self._pending: list[tuple] = []  # one entry per micro-batch of the step
        # (hinge on real, hinge on fake, token accuracy, clip accuracy) of the last logging window's steps:
        # one step's values swing with its batch, so the health is logged as the window's mean
        self.recent_health: deque[torch.Tensor] = deque(maxlen=cfg.distill.detail.log_every)

    def state_modules(self) -> dict:
        return {"discriminator": self.discriminator}

    def state_optimizers(self) -> dict:
        if self.optimizer is None:
            disc = self.cfg.distill.discriminator
            self.optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=disc.lr, betas=disc.betas,
                                               weight_decay=disc.weight_decay)
        return {"discriminator_optimizer": (self.discriminator, self.optimizer)}

    def features(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> list[torch.Tensor]:
        with self.teacher.tap_blocks(self.cfg.distill.discriminator.tap_every) as captured:
            self.teacher.velocity(x, sigma, cond, guidance=self.cfg.distill.guidance_scale
                                  if self.teacher.guidance == "embedded" else None)
        return [feature.float() for feature in captured]

    def generator_loss(self, pred: torch.Tensor, target: torch.Tensor, real: torch.Tensor, edges: torch.Tensor,
                       sigma_edge: torch.Tensor, cond: dict, generator: torch.Generator, total: int, part: slice):
        """pred, target (the consistency target) and real (what the heads see as real: the target itself, or the
        training clips): this process's `part` of a batch of `total` (draws are made for all of it), sitting at
        the segment edges `edges` (node indices, END for the clean end) whose sigmas are `sigma_edge`. Feature
        matching always pulls towards the target."""
        distill, device = self.cfg.distill, pred.device
        uniform = torch.rand(total, generator=generator)[part]
        tops = (phase_tops(edges, self.detail_edges) if distill.discriminator.noise_window == "phase"
                else distill.kappa)
        sigma = self.detail_sigmas[nodes_above(edges, uniform, tops)].to(device)
        noise = torch.randn((total, *pred.shape[1:]), generator=device_generator(generator, device),
                            device=device)[part]
        grid = self.teacher.token_grid(tuple(pred.shape))
        fake = self.features(renoise(pred, noise, sigma_edge, sigma), sigma, cond)
        with torch.no_grad():
            matched = self.features(renoise(target, noise, sigma_edge, sigma), sigma, cond)
            seen = matched if real is target else self.features(renoise(real, noise, sigma_edge, sigma), sigma, cond)
        hinge = hinge_generator(self.discriminator(fake, grid))
        matching = feature_matching([self.teacher.project_features(f) for f in fake],
                                    [self.teacher.project_features(r) for r in matched])
        # a tensor, not a Python bool: the step count lives on the device and reading it would stall the queue
        gan_on = (self.discriminator.steps_trained >= distill.discriminator.warmup_steps).float()
        loss = distill.adv_weight * (distill.generator_weight * gan_on * hinge + distill.fm_weight * matching)
        self._pending.append(([f.detach() for f in fake], seen, grid))
        return loss, {"g_hinge": hinge.detach(), "feature_matching": matching.detach(), "gan_on": gan_on}

    def discriminator_step(self) -> dict[str, torch.Tensor]:
        """discriminator.updates_per_step hinge steps of the heads on the features the generator step just
        produced (every micro-batch's; FSDP averages the gradients over the processes; see train_heads). The
        health logged is the first pass's, averaged over the last logging window of steps."""
        pending, self._pending = self._pending, []
        optimizer = self.state_optimizers()["discriminator_optimizer"][1]
        device, precision = pending[0][0][0].device, self.cfg.distill.detail.precision
        health = train_heads(self.discriminator, optimizer, pending, self.cfg.distill.discriminator.updates_per_step,
                             lambda: bf16_autocast(device, precision, cache=False))
        self.discriminator.steps_trained += 1
        self.recent_health.append(mean_across(health))
        on_real, on_fake, accuracy, on_clips = torch.stack(list(self.recent_health)).mean(0)
        return {"d_hinge": on_real + on_fake, "d_hinge_real": on_real, "d_hinge_fake": on_fake,
                "d_accuracy": accuracy, "d_clip_accuracy": on_clips}

    def accuracy(self) -> float | None:
        """Real-vs-fake accuracy over the last logging window of steps (None before any step of this run)."""
        return float(torch.stack(list(self.recent_health))[:, 2].mean()) if self.recent_health else None
