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

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from t2v_fast.core.pipeline import Batch, VideoPipeline, check_finite, timed
from t2v_fast.families.text2video_zero.motion import forward_diffuse, warp_latents
from t2v_fast.families.text2video_zero.params import TextToVideoZeroParams
from t2v_fast.families.text2video_zero.schedule import StepPlan

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler


@dataclass(frozen=True)
class Chunk:
    """One pass of steps 3-5: frame ids fed to the UNet (anchor first) and which of the outputs to keep."""

    frame_ids: list[int]
    keep_from: int
    output_start: int
    keep_count: int | None = None  # None: every output from `keep_from` on


def plan_chunks(frames: int, chunk_size: int | None) -> list[Chunk]:
    """Split a video into UNet passes of exactly `chunk_size` frames, as diffusers documents for long videos.

    Each chunk is `[0] + its own frame ids`: frame id 0 is the anchor whose keys and values all frames attend to, and
    its output is dropped. Frame ids stay absolute, so the motion continues from chunk to chunk. The last chunk's own
    frames are followed by frames of the chunk before (recomputed, dropped), so that every pass has one shape: static
    TensorRT engines and compiled graphs then serve every chunk. Its own frames stay first, so they draw the same
    noise as the documented procedure's shorter last chunk, and each frame depends only on itself and the anchor.
    """
    if chunk_size is None or chunk_size >= frames:
        return [Chunk(frame_ids=list(range(frames)), keep_from=0, output_start=0)]
    per_chunk = chunk_size - 1
    chunks = []
    for start in range(0, frames, per_chunk):
        own = list(range(start, min(start + per_chunk, frames)))
        filler = list(range(start - (per_chunk - len(own)), start))
        chunks.append(Chunk(frame_ids=[0, *own, *filler], keep_from=1, output_start=start, keep_count=len(own)))
    return chunks


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

        check_shapes = getattr(self.backend, "check_unet_shapes", None)  # TensorRT: refuse before any work
        if check_shapes is not None:
            text_shape = tuple(batch.text_embeddings.shape)
            counts = sorted({1, *(len(chunk.frame_ids) for chunk in chunks)})
            check_shapes(
                [{"sample": (text_shape[0], n, *latent_shape), "encoder_hidden_states": text_shape} for n in counts]
            )
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

    def decode_chunk(self, latents: torch.Tensor, chunk: Chunk, output: np.ndarray) -> None:
        """Decode the frames a chunk keeps into their place in `output` `(videos, F, H, W, 3)`."""
        own_end = None if chunk.keep_count is None else chunk.keep_from + chunk.keep_count
        kept = latents[:, chunk.keep_from : own_end]
        output[:, chunk.output_start : chunk.output_start + kept.shape[1]] = self.decode_video(kept)
