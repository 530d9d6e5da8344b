"""The Text2Video-Zero pipeline, written once for every backend.

For each batch of videos:
1. encode the prompts (and negative prompts, for classifier-free guidance);
2. denoise the first frame's latent from pure noise down to step t1, and on to t0 (DDIM);
3. copy the first frame's t0 latent to every other frame, translating frame k by `motion·id_k`, and re-noise those
   copies from t0 back to t1 in one DDPM jump;
4. denoise all frames together from t1 to the end, every frame's self-attention reading the first frame's keys/values;
5. decode the latents to frames.
Long videos run step 3-5 chunk by chunk, each chunk anchored on the same first frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from t2v_fast.core.chunks import plan_chunks
from t2v_fast.core.pipeline import Batch, VideoPipeline, check_finite, timed
from t2v_fast.families.text2video_zero.motion import forward_diffuse, warp_latents
from t2v_fast.families.text2video_zero.params import TextToVideoZeroParams
from t2v_fast.families.text2video_zero.schedule import StepPlan

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler


class TextToVideoZeroPipeline(VideoPipeline):
    """Text2Video-Zero over any backend (a Stable Diffusion 1.x UNet with cross-frame attention), with DDIM."""

    def render(
        self, batch: Batch, settings: TextToVideoZeroParams, timings: dict[str, float], progress: bool = True
    ) -> np.ndarray:
        """Steps 2-5 of the module docstring for a batch of videos; returns uint8 frames `(videos, F, H, W, 3)`."""
        plan = StepPlan.build(self.scheduler, settings.steps, settings.t0, settings.t1)
        chunks = plan_chunks(settings.frames, settings.chunk_size)
        scheduler = self.scheduler_for(settings.steps)  # DDIM: the family's (`core.models.scheduler_from_config`)
        card = self.card
        latent_shape = (
            card.latent_channels,
            settings.height // card.vae_scale_factor,
            settings.width // card.vae_scale_factor,
        )

        self.check_unet_shapes(batch, {1, *(len(chunk.frame_ids) for chunk in chunks)}, latent_shape)
        first_frame = self._noise(batch, 1, latent_shape) * scheduler.init_noise_sigma
        noise_state = [g.get_state() for g in batch.generators]

        # The bar counts the steps as the user set them (each chunk repeats those after t1); the first frame's detour
        # from t1 to t0, a few single-frame steps that the motion starts from, is not counted.
        total_steps = len(plan.to_t1) + len(chunks) * len(plan.from_t1)
        description = "denoising" if len(chunks) == 1 else f"denoising {len(chunks)} chunks"
        output = np.empty((len(batch.requests), settings.frames, settings.height, settings.width, 3), dtype=np.uint8)
        with tqdm(total=total_steps, desc=description, unit="step", disable=not progress) as bar:
            with timed(timings, "denoise_s"):
                anchor_t1 = self._denoise(first_frame, plan.to_t1, batch, scheduler, bar)
                anchor_t0 = self._denoise(anchor_t1, plan.t1_to_t0, batch, scheduler, None)
            for chunk in chunks:
                with timed(timings, "denoise_s"):
                    # Every chunk draws its re-noising noise as if its generator had just drawn the first frame.
                    for generator, state in zip(batch.generators, noise_state, strict=True):
                        generator.set_state(state)
                    moving_ids = chunk.frame_ids[1:]
                    noise = self._noise(batch, len(moving_ids), latent_shape)
                    moved = warp_latents(anchor_t0[:, 0], moving_ids, settings.motion_x, settings.motion_y)
                    alphas = cast("DDIMScheduler", scheduler).alphas  # the family's scheduler is DDIM
                    renoised = forward_diffuse(moved, noise, alphas, plan.timestep_t0, plan.timestep_t1)
                    latents = torch.cat([anchor_t1, renoised], dim=1)
                    latents = self._denoise(latents, plan.from_t1, batch, scheduler, bar)
                    check_finite(latents, "latents", self.backend.dtype)
                with timed(timings, "decode_s"):
                    self.decode_chunk(latents, chunk, output)
        return output
