"""Rectified-flow noise schedule: the shifted sigma grid, its Euler nodes, and the Euler sampler step.

Convention (DESIGN.md §2): x_s = s·eps + (1 − s)·x0, the model predicts v ≈ eps − x0, an Euler step is
x_{s'} = x_s + (s' − s)·v, and the transformer sees t = 1000·s. Node 0 is the lowest noise, the last
node is pure noise (s = 1).
"""

from __future__ import annotations

import torch

from dcm.config import ScheduleConfig

TIMESTEP_SCALE = 1000.0  # diffusers flow-matching transformers take t = 1000·s


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """s' = shift·s / (1 + (shift − 1)·s): spends more of the grid at high noise when shift > 1."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def training_sigmas(cfg: ScheduleConfig) -> torch.Tensor:
    """The `train_sigmas` shifted sigmas, ascending: linspace(1/N, 1, N) warped by the shift."""
    raw = torch.linspace(1.0 / cfg.train_sigmas, 1.0, cfg.train_sigmas, dtype=torch.float64)
    return shift_sigmas(raw, cfg.shift)


def euler_nodes(cfg: ScheduleConfig) -> torch.Tensor:
    """The `euler_nodes` node sigmas, ascending: every (train_sigmas / euler_nodes)-th training sigma,
    ending at the top one so that sampling starts from pure noise."""
    stride = cfg.train_sigmas // cfg.euler_nodes
    return training_sigmas(cfg)[stride - 1::stride]


def sampling_sigmas(cfg: ScheduleConfig, steps: int) -> torch.Tensor:
    """Descending sigmas for an Euler solve with `steps` steps over the node grid, ending at 0.

    steps == euler_nodes uses every node; fewer steps use nodes spaced evenly in node index.
    """
    if not 1 <= steps <= cfg.euler_nodes:
        raise ValueError(f"steps must be between 1 and schedule.euler_nodes={cfg.euler_nodes}, got {steps}")
    nodes = euler_nodes(cfg)
    chosen = torch.linspace(cfg.euler_nodes - 1, 0, steps).round().long()
    return torch.cat([nodes[chosen], nodes.new_zeros(1)])


def sample_training_sigmas(batch: int, cfg: ScheduleConfig, generator: torch.Generator,
                           logit_mean: float, logit_std: float) -> torch.Tensor:
    """Continuous sigmas for flow-matching training: logit-normal, then the same shift as the grid."""
    u = torch.randn(batch, generator=generator, dtype=torch.float64) * logit_std + logit_mean
    return shift_sigmas(torch.sigmoid(u), cfg.shift)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """x_{s'} = x_s + (s' − s)·v; sigmas broadcast per sample (shape (B,) or scalar)."""
    delta = (sigma_next - sigma).to(x.dtype)
    if delta.ndim:
        delta = delta.view(-1, *([1] * (x.ndim - 1)))
    return x + delta * velocity


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_s = s·eps + (1 − s)·x0 with a per-sample s."""
    s = sigma.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return s * noise + (1.0 - s) * x0
