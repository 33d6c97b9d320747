"""DCM's losses as pure functions of tensors (DESIGN.md §2). Video tensors are (B, C, T, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """mean(sqrt((pred − target)² + c²) − c): L2 near zero, L1 far away (reference code: c ≈ 0.001)."""
    return (torch.sqrt((pred.float() - target.float()) ** 2 + c * c) - c).mean()


def l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float())


def temporal_coherence(pred: torch.Tensor, target: torch.Tensor, stride: int) -> torch.Tensor:
    """MSE between frame differences x[t + stride] − x[t] of pred and target along latent time.

    A clip with no more latent frames than `stride` has no such pair: the loss is then 0 (kept in the
    graph so that callers need no special case), rather than an error or a NaN from an empty mean.
    """
    if pred.shape[2] <= stride:
        return pred.float().sum() * 0.0
    diff_pred = pred[:, :, stride:] - pred[:, :, :-stride]
    diff_target = target[:, :, stride:] - target[:, :, :-stride]
    return F.mse_loss(diff_pred.float(), diff_target.float())


def hinge_generator(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Mean over discriminator heads of mean(relu(1 − D(fake)))."""
    return torch.stack([F.relu(1.0 - logits.float()).mean() for logits in fake_logits]).mean()


def hinge_discriminator(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Mean over heads of mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))."""
    real, fake = hinge_terms(real_logits, fake_logits)
    return real + fake


def hinge_terms(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator hinge's two halves, each a mean over heads: mean(relu(1 − D(real))) and
    mean(relu(1 + D(fake))). Both are 1 for a discriminator that outputs 0 everywhere (at chance)."""
    pairs = list(zip(real_logits, fake_logits, strict=True))
    real = torch.stack([F.relu(1.0 - r.float()).mean() for r, _ in pairs]).mean()
    fake = torch.stack([F.relu(1.0 + f.float()).mean() for _, f in pairs]).mean()
    return real, fake


def discriminator_accuracy(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Mean over heads of the share of logits on the right side of 0 (real > 0, fake < 0), real and fake
    weighted equally: 0.5 is chance."""
    return torch.stack([((r > 0).float().mean() + (f < 0).float().mean()) / 2
                        for r, f in zip(real_logits, fake_logits, strict=True)]).mean()


def clip_accuracy(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """The share of clips on the right side of 0 (real > 0, fake < 0) by their logits' mean over heads and
    tokens ([(B, ...)] per head), real and fake weighted equally: the heads' verdict on whole clips, beside
    discriminator_accuracy's per token."""
    def verdict(logits: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([l.float().flatten(1).mean(1) for l in logits]).mean(0)
    return ((verdict(real_logits) > 0).float().mean() + (verdict(fake_logits) < 0).float().mean()) / 2


def feature_matching(fake_features: list[torch.Tensor], real_features: list[torch.Tensor]) -> torch.Tensor:
    """Mean over tapped blocks of the MSE between fake and real features (real carries no gradient)."""
    return torch.stack([F.mse_loss(fake.float(), real.detach().float())
                        for fake, real in zip(fake_features, real_features, strict=True)]).mean()
