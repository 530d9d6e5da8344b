"""Video editing: an Instruct-Pix2Pix checkpoint with cross-frame attention, written once for every backend.

The original system's recipe (Picsart's Text2Video-Zero, and diffusers' `StableDiffusionInstructPix2PixPipeline` with
`CrossFrameAttnProcessor(batch_size=3)`): the checkpoint's Euler ancestral scheduler, three-way guidance
(`t2v_fast.core.guidance.InstructPix2PixGuidance`). For each batch of videos editing one input video:
1. read the input video (cut, resampled, resized), before any model work;
2. encode the instructions (and the negative prompts, which the image-only and unconditional branches read);
3. encode the input frames with the VAE encoder (the latent distribution's mode, unscaled, as the reference does);
4. draw each video's noise, one latent per frame, from its own generator, as the reference draws them;
5. denoise all frames together, the UNet reading the noisy latents beside the input frames' latents, every frame's
   self-attention reading the first frame's keys and values, each step's ancestral noise drawn from each video's
   generator in the reference's order;
6. decode the latents to frames.
Long videos run 4-6 chunk by chunk as the original does: each chunk `[0] + its own frames`, frame 0's output
dropped, every chunk's generators starting again from the seed, the last chunk shorter (`plan_chunks(pad_last=False)`):
memory stays flat with the video's length.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from t2v_fast.core.chunks import plan_chunks
from t2v_fast.core.guidance import InstructPix2PixGuidance
from t2v_fast.core.input_params import read_input
from t2v_fast.core.pipeline import Batch, PreparedInputs, VideoPipeline, check_finite, timed
from t2v_fast.families.instruct_pix2pix.params import EditParams


class InstructPix2PixPipeline(VideoPipeline):
    """An Instruct-Pix2Pix model editing an input video by an instruction, over any backend."""

    def prepare_inputs(self, settings: Any, videos: dict[str, Any], progress: bool) -> PreparedInputs:
        """Step 1: the input video read by the settings' cut, rate and size; the settings' unset frames, fps, height
        and width become the input video's."""
        if videos.get("video") is None:
            return PreparedInputs(settings)
        video, edit = read_input(videos["video"], cast(EditParams, settings), self.card.native_size, "input video")
        frames = torch.from_numpy(video.frames).permute(0, 3, 1, 2)  # uint8 on the CPU: encoded a slice at a time
        return PreparedInputs(edit, {"video": frames}, {"video": {"path": video.source, "sha256": video.sha256}})

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Step 3: uint8 frames `(F, 3, H, W)` -> their latents `(F, C, h, w)`, a few frames per VAE call."""
        encoded = []
        for start in range(0, len(frames), self.decode_batch_size):
            images = frames[start : start + self.decode_batch_size].float() / 255 * 2 - 1  # as the reference's [-1, 1]
            latents = self.backend.encode_images(images.to(self.backend.device, self.backend.dtype))
            check_finite(latents, "input video's latents", self.backend.dtype)
            encoded.append(latents)
        return torch.cat(encoded)

    def render(
        self, batch: Batch, settings: EditParams, timings: dict[str, float], progress: bool = True
    ) -> np.ndarray:
        """Steps 3-6 for a batch of videos editing one input video; uint8 frames `(videos, F, H, W, 3)`."""
        card = self.card
        guider = batch.guider
        assert isinstance(guider, InstructPix2PixGuidance), "video editing's guidance is three-way"
        latent_shape = (
            card.latent_channels,
            settings.height // card.vae_scale_factor,
            settings.width // card.vae_scale_factor,
        )
        chunks = plan_chunks(settings.frames, settings.chunk_size, pad_last=False)
        unet_channels = card.latent_channels * card.task_record.unet_inputs_per_latent  # the frames' latents beside
        self.check_unet_shapes(batch, {len(chunk.frame_ids) for chunk in chunks}, (unet_channels, *latent_shape[1:]))
        with timed(timings, "encode_video_s"):
            frame_latents = self.encode_frames(batch.inputs["video"])
        videos = len(batch.requests)
        seeded = [generator.get_state() for generator in batch.generators]
        output = np.empty((videos, settings.frames, settings.height, settings.width, 3), dtype=np.uint8)
        description = "denoising" if len(chunks) == 1 else f"denoising {len(chunks)} chunks"
        with tqdm(total=len(chunks) * settings.steps, desc=description, unit="step", disable=not progress) as bar:
            for chunk in chunks:
                with timed(timings, "denoise_s"):
                    for generator, state in zip(batch.generators, seeded, strict=True):
                        generator.set_state(state)  # every chunk from the seed, as the original re-seeds
                    scheduler = self.scheduler_for(settings.steps)  # each chunk runs the whole schedule
                    latents = self._noise(batch, len(chunk.frame_ids), latent_shape) * scheduler.init_noise_sigma
                    chunk_latents = frame_latents[chunk.frame_ids].expand(videos, -1, -1, -1, -1)
                    image_latents = guider.image_batch(chunk_latents)
                    latents = self._denoise(latents, scheduler.timesteps, batch, scheduler, bar, None, image_latents)
                    check_finite(latents, "latents", self.backend.dtype)
                with timed(timings, "decode_s"):
                    self.decode_chunk(latents, chunk, output)
        return output
