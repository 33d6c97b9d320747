"""Consistency distillation, one training step (DESIGN.md §2): DCM's semantic and detail stages, LCM, PCM.

Per sample: draw a node n of the stage's segment, take x_n (noised data latents, or a stored teacher
trajectory state), let the student jump to its segment edge e:
    pred = x_n + (σ_e − σ_n) · student(x_n)
and build the target without gradients: one teacher Euler step to x_{n−1} (CFG, or read from the stored
trajectory), then the target network's jump from x_{n−1} to e (nothing to do when n − 1 is e).
Loss = consistency(pred, target), plus λ_tc · temporal_coherence for the semantic stage (DESIGN.md §2: the
loss of stage 1; LCM/PCM and the detail stage go without it) and for the detail stage the adversarial
terms of dcm/train/adversarial.py.
"""

from __future__ import annotations

import copy

import torch

from dcm.config import DCMConfig
from dcm.data.latents import stack, text_condition
from dcm.losses import l2, pseudo_huber, temporal_coherence
from dcm.models.dual_expert import Student
from dcm.sampling import expand_uncond, guided_velocity
from dcm.schedule import END, add_noise, euler_nodes, method_edges, target_node, training_nodes
from dcm.train.adversarial import AdversarialLoss, split_gradient
from dcm.train.loop import device_generator, ema_update


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


class ConsistencyDistillation:
    """The loop's Method for `method` in semantic | detail | lcm | pcm."""

    def __init__(self, student: Student, teacher, cfg: DCMConfig, method: str, uncond: dict[str, torch.Tensor],
                 stored_nodes: list[int] | None = None):
        distill = cfg.distill
        self.module, self.teacher, self.cfg, self.method = student, teacher, cfg, method
        self.device = next(student.parameters()).device
        self.edges = method_edges(method, cfg.schedule, distill)
        nodes = training_nodes(method, cfg.schedule, distill.kappa)
        if distill.teacher_mode == "trajectory":
            stored = set(stored_nodes or [])
            nodes = [n for n in nodes if n in stored and (n - 1 in stored or n - 1 == END)]
            if not nodes:
                raise ValueError(f"teacher_mode=trajectory: the stored trajectory nodes {sorted(stored)} hold no "
                                 f"(n, n−1) pair on the {method} segment; store every node "
                                 "(precompute.trajectory_nodes: all) or use teacher_mode: online")
        self.nodes = torch.tensor(nodes)
        # Node sigmas with END (sigma 0) in front: table[n + 1] is node n's sigma.
        self.table = torch.cat([torch.zeros(1, dtype=torch.float64), euler_nodes(cfg.schedule)]).float()
        self.uncond = uncond
        self.target_net = (copy.deepcopy(student).requires_grad_(False) if distill.target_ema_decay > 0 else None)
        self.adversarial = (AdversarialLoss(teacher, cfg, self.device)
                            if method == "detail" and distill.adversarial == "gan_fm" else None)

    # -- extra training state (checkpointed by the loop) ---------------------------------------------------
    def state_modules(self) -> dict:
        modules = {"target": self.target_net} if self.target_net is not None else {}
        return modules | (self.adversarial.state_modules() if self.adversarial else {})

    def state_optimizers(self) -> dict:
        return self.adversarial.state_optimizers() if self.adversarial else {}

    # -- one step ---------------------------------------------------------------------------------------
    def sigma(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.table[nodes + 1].to(self.device)

    def draw_points(self, batch: list[dict], nodes: torch.Tensor, generator: torch.Generator, total: int,
                    part: slice):
        """(x_n, x_{n−1}) for each sample of this process's `part` of a batch of `total`: the teacher's
        Euler step (online) or the stored solve."""
        cond = text_condition(batch, self.device)
        if self.cfg.distill.teacher_mode == "trajectory":
            x_n, x_prev = [], []
            for sample, node in zip(batch, nodes.tolist()):
                tensors = sample["tensors"]
                position = {n: i for i, n in enumerate(tensors["trajectory_nodes"].tolist())}
                x_n.append(tensors["trajectory"][position[node]])
                x_prev.append(tensors["trajectory_x0"] if node - 1 == END else tensors["trajectory"][position[node - 1]])
            return torch.stack(x_n).to(self.device), torch.stack(x_prev).to(self.device), cond
        latents = stack(batch, "latents", self.device)
        noise = torch.randn((total, *latents.shape[1:]), generator=device_generator(generator, self.device),
                            device=self.device)[part]
        x_n = add_noise(latents, noise, self.sigma(nodes))
        with torch.no_grad():
            velocity = guided_velocity(self.teacher, x_n, self.sigma(nodes), cond,
                                       expand_uncond(self.uncond, len(batch)), self.cfg.distill.guidance_scale)
        x_prev = x_n + per_sample(self.sigma(nodes - 1) - self.sigma(nodes), x_n) * velocity.float()
        return x_n, x_prev, cond

    def frozen_modules(self) -> list:
        return [self.teacher.transformer]

    def data_at(self, samples: list[dict], sigma: torch.Tensor, generator: torch.Generator, total: int,
                part: slice) -> torch.Tensor:
        """The training clips themselves, noised to each sample's segment edge `sigma` (clean at the end):
        what the discriminator sees as real with discriminator.real = data."""
        latents = stack(samples, "latents", self.device)
        noise = torch.randn((total, *latents.shape[1:]), generator=device_generator(generator, self.device),
                            device=self.device)[part]
        return add_noise(latents, noise, sigma)

    def loss(self, batch: list[dict], generator: torch.Generator, part: slice):
        distill = self.cfg.distill
        count = len(batch)  # draws for all `count` samples, work on `part`
        nodes = self.nodes[torch.randint(len(self.nodes), (count,), generator=generator)][part]
        edges = torch.tensor([target_node(n, self.edges) for n in nodes.tolist()])
        x_n, x_prev, cond = self.draw_points(batch[part], nodes, generator, count, part)
        sigma_n, sigma_prev, sigma_e = self.sigma(nodes), self.sigma(nodes - 1), self.sigma(edges)

        pred = x_n + per_sample(sigma_e - sigma_n, x_n) * self.module(x_n, sigma_n, cond).float()
        with torch.no_grad():
            target = x_prev.clone()
            jump = (nodes - 1 != edges).nonzero().flatten().to(self.device)
            if len(jump):
                network = self.target_net if self.target_net is not None else self.module
                velocity = network(x_prev[jump], sigma_prev[jump], {k: v[jump] for k, v in cond.items()}).float()
                target[jump] = x_prev[jump] + per_sample(sigma_e[jump] - sigma_prev[jump], velocity) * velocity

        share = None
        if self.adversarial is not None:  # one alias per term: their gradients are measured apart
            pred, adversarial_pred, share = split_gradient(pred)
        consistency = (pseudo_huber(pred, target, distill.huber_c) if distill.loss == "pseudo_huber"
                       else l2(pred, target))
        coherence = temporal_coherence(pred, target, distill.tc_stride)  # logged by every method
        tc_weight = distill.tc_weight if self.method == "semantic" else 0.0
        total = consistency + tc_weight * coherence
        logs = {"consistency": consistency.detach(), "temporal_coherence": coherence.detach()}
        if self.adversarial is not None:
            real = (target if distill.discriminator.real == "target"
                    else self.data_at(batch[part], sigma_e, generator, count, part))
            adversarial, adv_logs = self.adversarial.generator_loss(adversarial_pred, target, real, edges, sigma_e,
                                                                    cond, generator, count, part)
            total = total + adversarial
            logs |= adv_logs | {"gan_grad_share": share}
        return total, logs

    def after_step(self) -> dict[str, torch.Tensor]:
        """After the student's optimiser step: the discriminator's step, then the target network's EMA."""
        logs = self.adversarial.discriminator_step() if self.adversarial else {}
        if self.target_net is not None:
            ema_update(self.target_net, self.module, self.cfg.distill.target_ema_decay)
        return logs
