"""The toy teacher's pretraining objective: rectified-flow matching, one Method of the shared loop."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dcm.config import DCMConfig
from dcm.data.tensors import clips_to_video
from dcm.models.toy import ToyFamily
from dcm.schedule import add_noise, sample_training_sigmas
from dcm.train.loop import device_generator


class FlowMatchingPretraining:
    """Loss: ‖v_θ(x_s, s, c) − (eps − x0)‖² with logit-normal shifted s and caption dropout."""

    def __init__(self, teacher: ToyFamily, cfg: DCMConfig):
        self.teacher, self.cfg, self.module = teacher, cfg, teacher.transformer

    def loss(self, batch: list[dict], generator: torch.Generator, part: slice):
        """Draws for the whole batch, computed on the samples of `part`."""
        toy, device = self.cfg.teacher.toy, next(self.module.parameters()).device
        drop = (torch.rand(len(batch), generator=generator) < toy.caption_dropout).tolist()
        captions = [self.cfg.teacher.negative_prompt if d else s["caption"] for s, d in zip(batch, drop)][part]
        latents = self.teacher.encode_video(clips_to_video(np.stack([s["clip"] for s in batch[part]])).to(device))
        noise = torch.randn((len(batch), *latents.shape[1:]), generator=device_generator(generator, device),
                            device=device)[part]
        sigma = sample_training_sigmas(len(batch), self.cfg.schedule, generator, toy.logit_mean, toy.logit_std)
        sigma = sigma[part].float().to(device)
        prediction = self.teacher.velocity(add_noise(latents, noise, sigma), sigma,
                                           self.teacher.encode_prompts(captions))
        return F.mse_loss(prediction.float(), (noise - latents).float()), {}
