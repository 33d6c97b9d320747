"""Discriminator heads on the frozen teacher's tapped block features (DESIGN.md §2, stage 2).

One head per tapped block, as the reference code has it: a 1×1 conv D → hidden with GroupNorm and
LeakyReLU, a second hidden → hidden block added back onto its input (residual), and a 1×1 conv to one
logit per token, run on every latent frame's token grid. The grid (frames, rows, cols) is inferred from
the latent shape and the patch size on every call — the reference code hard-coded it and crashed at other
resolutions. `kernel` > 1 widens the first conv to a token's neighbours: a 1×1 head judges each patch
alone, so a pattern repeated on every patch (the patch grid a learning GAN printed, RESULTS.md
2026-12-07) is, token by token, just more detail to it.
"""

from __future__ import annotations

import torch
from torch import nn

from dcm.config import DiscriminatorConfig

def tokens_to_frames(features: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, L, D) tokens in (frame, row, col) order → (B·frames, D, rows, cols)."""
    batch, length, dim = features.shape
    frames, rows, cols = grid
    if frames * rows * cols != length:
        raise ValueError(f"{length} tokens do not form the token grid {grid} (frames × rows × cols); the "
                         "latent shape and the transformer's patch size disagree")
    grid_view = features.reshape(batch, frames, rows, cols, dim)
    return grid_view.permute(0, 1, 4, 2, 3).reshape(batch * frames, dim, rows, cols)


def conv_block(width_in: int, width_out: int, cfg: DiscriminatorConfig, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width_in, width_out, kernel, padding=kernel // 2),
                         nn.GroupNorm(cfg.groups, width_out), nn.LeakyReLU(cfg.leaky_slope))


class Head(nn.Module):
    def __init__(self, width: int, cfg: DiscriminatorConfig):
        super().__init__()
        self.residual = cfg.residual
        self.project = conv_block(width, cfg.hidden, cfg, cfg.kernel)
        self.inner = conv_block(cfg.hidden, cfg.hidden, cfg)
        self.out = nn.Conv2d(cfg.hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        x = self.inner(x) + x if self.residual else self.inner(x)
        return self.out(x)


class Discriminator(nn.Module):
    def __init__(self, widths: list[int], cfg: DiscriminatorConfig):
        super().__init__()
        self.heads = nn.ModuleList(Head(width, cfg) for width in widths)
        # generator steps whose features the heads have trained on: checkpointed with them, so the GAN's
        # warm-up (discriminator.warmup_steps) resumes where it stood
        self.register_buffer("steps_trained", torch.zeros((), dtype=torch.long))

    def forward(self, features: list[torch.Tensor], grid: tuple[int, int, int]) -> list[torch.Tensor]:
        """Per-head logits (B, frames, rows, cols) for tapped features [(B, L, D_k)]."""
        if len(features) != len(self.heads):
            raise ValueError(f"{len(features)} tapped feature maps for {len(self.heads)} discriminator heads")
        logits = []
        for head, feature in zip(self.heads, features):
            out = head(tokens_to_frames(feature.float(), grid))
            logits.append(out.reshape(feature.shape[0], grid[0], grid[1], grid[2]))
        return logits
