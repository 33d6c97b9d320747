"""Euler sampling with classifier-free (or embedded) guidance: the teacher reference every comparison uses."""

from __future__ import annotations

import torch

from dcm.models.family import TeacherFamily
from dcm.schedule import euler_step


def guided_velocity(teacher: TeacherFamily, x: torch.Tensor, sigma: torch.Tensor, cond: dict, uncond: dict,
                    guidance_scale: float) -> torch.Tensor:
    """v_u + w·(v_c − v_u) in one batched forward for CFG families; embedded guidance is an input."""
    if teacher.guidance == "embedded":
        return teacher.velocity(x, sigma, cond, guidance=guidance_scale)
    if guidance_scale == 1.0:
        return teacher.velocity(x, sigma, cond)
    both = {key: torch.cat([uncond[key], cond[key]]) for key in cond}
    v_uncond, v_cond = teacher.velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def expand_uncond(uncond: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
    """The single empty-prompt embedding repeated for a batch."""
    return {key: value.expand(batch, *value.shape[1:]) for key, value in uncond.items()}


@torch.no_grad()
def euler_sample(teacher: TeacherFamily, noise: torch.Tensor, sigmas: torch.Tensor, cond: dict, uncond: dict,
                 guidance_scale: float, keep_states: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Solve from `noise` along descending `sigmas` (ending at 0). Returns the final latents and, when
    asked, the state at every sigma of the grid (index i ↔ sigmas[i])."""
    x = noise
    states = [x] if keep_states else []
    batch = x.shape[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        s = torch.full((batch,), float(sigma), device=x.device)
        velocity = guided_velocity(teacher, x, s, cond, uncond, guidance_scale)
        x = euler_step(x.float(), velocity.float(), sigma.to(x.device), sigma_next.to(x.device))
        if keep_states:
            states.append(x)
    return x, states


def seeded_noise(seeds: list[int], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One noise tensor per seed: a prompt's initial noise does not depend on its batch neighbours, so
    teacher, student and baselines all start from the same noise for the same prompt."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)


@torch.no_grad()
def generate(teacher: TeacherFamily, captions: list[str], seeds: list[int], frames: int, height: int, width: int,
             sigmas: torch.Tensor, guidance_scale: float, negative_prompt: str, batch_size: int) -> torch.Tensor:
    """Videos (B, 3, F, H, W) in [-1, 1] for each caption, solved with guided Euler steps."""
    device = next(teacher.transformer.parameters()).device
    shape = teacher.latent_shape(frames, height, width)
    uncond_one = teacher.encode_prompts([negative_prompt])
    videos = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start:start + batch_size]
        noise = seeded_noise(seeds[start:start + batch_size], shape, device)
        latents, _ = euler_sample(teacher, noise, sigmas, teacher.encode_prompts(chunk),
                                  expand_uncond(uncond_one, len(chunk)), guidance_scale)
        videos.append(teacher.decode_latents(latents).float().cpu())
    return torch.cat(videos)
