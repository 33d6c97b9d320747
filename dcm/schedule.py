"""Rectified-flow noise schedule: the shifted sigma grid, its Euler nodes, and the Euler sampler step.

Convention (DESIGN.md §2): x_s = s·eps + (1 − s)·x0, the model predicts v ≈ eps − x0, an Euler step is
x_{s'} = x_s + (s' − s)·v, and the transformer sees t = 1000·s. Node 0 is the lowest noise, the last
node is pure noise (s = 1).
"""

from __future__ import annotations

from typing import Protocol

import torch

TIMESTEP_SCALE = 1000.0  # diffusers flow-matching transformers take t = 1000·s


class ScheduleConfig(Protocol):
    """What the schedule reads of params.yaml's `schedule` section (dcm.config.ScheduleConfig has it):
    a protocol, so that this math module depends on nothing of the project."""

    train_sigmas: int
    euler_nodes: int
    shift: float


class PhaseConfig(Protocol):
    """The segment settings of `distill` (dcm.config.DistillConfig has them)."""

    kappa: int
    pcm_phases: int
    detail_phases: int


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


def check_step_count(cfg: ScheduleConfig, steps: int, name: str = "steps") -> None:
    """A sampler takes 1 to euler_nodes steps: the grid has no nodes between its own."""
    if not 1 <= steps <= cfg.euler_nodes:
        raise ValueError(f"{name} must be between 1 and schedule.euler_nodes={cfg.euler_nodes}, got {steps}")


def sampling_sigmas(cfg: ScheduleConfig, steps: int) -> torch.Tensor:
    """Descending sigmas for an Euler solve with `steps` steps over the node grid, ending at 0.

    steps == euler_nodes uses every node; fewer steps use nodes spaced evenly in node index.
    """
    check_step_count(cfg, steps)
    nodes = euler_nodes(cfg)
    chosen = torch.linspace(cfg.euler_nodes - 1, 0, steps).round().long()
    return torch.cat([nodes[chosen], nodes.new_zeros(1)])


def reference_pcm_sigmas(cfg: ScheduleConfig, steps: int) -> torch.Tensor:
    """Descending sigmas (ending at 0) where the reference's PCM sampler puts `steps` Euler steps (fastvideo's
    InferencePCMFMScheduler with pcm_timesteps = euler_nodes): the nodes at descending index
    floor(linspace(0, N, steps, endpoint=False)). Not on PCM's phase edges: 4 steps over 50 nodes start at
    nodes 49, 37, 24, 12 where the edges (inference_sigmas) give 49, 36, 24, 11."""
    check_step_count(cfg, steps)
    nodes = euler_nodes(cfg)
    chosen = torch.tensor([cfg.euler_nodes - 1 - k * cfg.euler_nodes // steps for k in range(steps)])
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


def renoise(x: torch.Tensor, noise: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """Move x from sigma_from up to sigma_to along the straight path towards `noise`:
    x' = ((1 − s_to)·x + (s_to − s_from)·noise) / (1 − s_from). With s_from = 0 this is add_noise; it keeps the
    clean part at weight 1 − s_to and the noise weights summing to s_to (PCM's adversarial re-noising)."""
    shape = (-1, *([1] * (x.ndim - 1)))
    s_from, s_to = sigma_from.to(x.dtype).view(shape), sigma_to.to(x.dtype).view(shape)
    return ((1.0 - s_to) * x + (s_to - s_from) * noise) / (1.0 - s_from)


# -- consistency distillation: segments, targets and few-step inference (DESIGN.md §2) -----------------
# Nodes are indexed 0 (lowest noise) … euler_nodes − 1 (pure noise); END = −1 stands for sigma 0, the end of
# every trajectory. A method is its ascending list of segment *lower edges*: a node maps to the highest
# edge below it. DCM: [END, κ] (semantic nodes > κ jump to σ_κ, detail nodes jump to the end); LCM: [END];
# PCM with P phases: END plus P − 1 evenly spaced inner edges; `single` (the first rung of the paper's
# ablation): DCM's two segments [END, κ] learnt by one expert over every node. DCM and `single` with
# D detail phases (a tuning knob, not the paper's method: D = 1 there) split the detail segment the way PCM
# splits the whole grid, so the detail expert learns D shorter jumps instead of one from σ_κ to the end.

END = -1

METHODS = ("semantic", "detail", "dcm", "lcm", "pcm", "single")


def node_sigma(cfg: ScheduleConfig, node: int) -> float:
    """Sigma of a node index; END is 0."""
    return 0.0 if node == END else float(euler_nodes(cfg)[node])


def inner_edges(span: int, phases: int) -> list[int]:
    """Lower edges that cut nodes 0 … span − 1 into `phases` phases of (nearly) equal node counts."""
    return [k * span // phases - 1 for k in range(1, phases)]


def segment_edges(method: str, cfg: ScheduleConfig, kappa: int, pcm_phases: int,
                  detail_phases: int = 1) -> list[int]:
    if method in ("semantic", "detail", "dcm", "single"):
        return [END] + inner_edges(kappa + 1, detail_phases) + [kappa]
    if method == "lcm":
        return [END]
    if method == "pcm":
        return [END] + inner_edges(cfg.euler_nodes, pcm_phases)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def method_edges(method: str, cfg: ScheduleConfig, distill: PhaseConfig) -> list[int]:
    """segment_edges with the phase counts of the distill settings."""
    return segment_edges(method, cfg, distill.kappa, distill.pcm_phases, distill.detail_phases)


def nodes_above(edges: torch.Tensor, uniform: torch.Tensor, tops: torch.Tensor | int) -> torch.Tensor:
    """Per sample, a node drawn uniformly from edge + 1 … top (END: from node 0), given uniforms in [0, 1)."""
    lowest, tops = edges.long() + 1, torch.as_tensor(tops, dtype=torch.long)
    return torch.minimum(lowest + (uniform * (tops - lowest + 1)).long(), tops)


def phase_tops(edges: torch.Tensor, segment_edges: list[int]) -> torch.Tensor:
    """Per sample, the top node of the phase that jumps to its edge: the next segment edge above it (the phase
    whose lower edge is e holds nodes e + 1 … that next edge)."""
    ordered = sorted(segment_edges)
    next_above = dict(zip(ordered, ordered[1:]))
    return torch.tensor([next_above[edge] for edge in edges.tolist()], dtype=torch.long)


def target_node(node: int, edges: list[int]) -> int:
    """The edge a node's consistency jump lands on: the highest edge strictly below it."""
    below = [edge for edge in edges if edge < node]
    if not below:
        raise ValueError(f"node {node} has no segment edge below it in {edges}")
    return max(below)


def training_nodes(method: str, cfg: ScheduleConfig, kappa: int) -> list[int]:
    """Nodes a training step draws from: one expert's segment for DCM's stages, every node otherwise."""
    if method == "semantic":
        return list(range(kappa + 1, cfg.euler_nodes))
    if method == "detail":
        return list(range(0, kappa + 1))
    return list(range(cfg.euler_nodes))


def segments(edges: list[int], cfg: ScheduleConfig) -> list[tuple[int, int]]:
    """(top node, lower edge) of every segment, highest noise first."""
    tops = sorted(edges[1:], reverse=True)
    highs = [cfg.euler_nodes - 1] + tops
    return [(top, bottom) for top, bottom in zip(highs, sorted(edges, reverse=True))]


def steps_per_segment(steps: int, count: int) -> list[int]:
    """Split `steps` evenly over `count` segments, the remainder to the noisiest ones first."""
    base, extra = divmod(steps, count)
    return [base + (i < extra) for i in range(count)]


def inference_sigmas(cfg: ScheduleConfig, steps: int, edges: list[int]) -> torch.Tensor:
    """Descending sigmas (ending at 0) for `steps` student steps: the steps are split evenly between the
    segments and spaced uniformly over each segment's nodes. A segment given no step is jumped over:
    with 1 step a two-expert model goes from noise straight to 0 along the semantic expert's direction."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    starts = []
    for (top, bottom), count in zip(segments(edges, cfg), steps_per_segment(steps, len(edges))):
        if count > top - bottom:
            raise ValueError(f"{steps} steps put {count} steps into the segment of nodes {bottom + 1}..{top}, "
                             f"which has only {top - bottom} nodes; use fewer steps")
        starts += [top - (j * (top - bottom)) // count for j in range(count)]
    nodes = euler_nodes(cfg)
    return torch.cat([nodes[torch.tensor(starts)], nodes.new_zeros(1)])


def expert_threshold(cfg: ScheduleConfig, kappa: int) -> float:
    """Samples with sigma above this go to the semantic expert: midway between σ_κ (detail) and σ_κ+1
    (semantic), so float rounding of a node's sigma can never flip its expert."""
    nodes = euler_nodes(cfg)
    return float((nodes[kappa] + nodes[kappa + 1]) / 2)
