"""The ModelScope text-to-video pipeline, written once for every backend: diffusers' `TextToVideoSDPipeline` algorithm.

For each batch of videos:
1. encode the prompts (and negative prompts, for classifier-free guidance);
2. draw every frame's latent noise at once, `(channels, frames, h, w)` per video as the reference draws it;
3. denoise all frames together with the checkpoint's scheduler, the 3D UNet relating frames by its temporal
   convolutions and attention;
4. decode the latents to frames, a few frames per VAE call.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from t2v_fast.core.params import CommonParams
from t2v_fast.core.pipeline import Batch, VideoPipeline, check_finite, timed


class ModelScopePipeline(VideoPipeline):
    """ModelScope text-to-video (`UNet3DConditionModel`) over any backend, with the checkpoint's scheduler."""

    def render(
        self, batch: Batch, settings: CommonParams, timings: dict[str, float], progress: bool = True
    ) -> np.ndarray:
        scheduler = self.scheduler_for(settings.steps)
        card = self.card
        scale = card.vae_scale_factor
        # The reference draws `(channels, frames, h, w)` per video; the backend's layout is `(frames, channels, h, w)`.
        shape = (card.latent_channels, settings.frames, settings.height // scale, settings.width // scale)
        noise = torch.stack([torch.randn(shape, generator=g) for g in batch.generators])
        latents = noise.transpose(1, 2).to(self.backend.device, self.backend.dtype) * scheduler.init_noise_sigma

        bar = tqdm(total=len(scheduler.timesteps), desc="denoising", unit="step", disable=not progress)
        with bar, timed(timings, "denoise_s"):
            latents = self._denoise(latents, scheduler.timesteps, batch, scheduler, bar)
            check_finite(latents, "latents", self.backend.dtype)
        with timed(timings, "decode_s"):
            return self.decode_video(latents)
