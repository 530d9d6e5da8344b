"""Guided video: Text2Video-Zero with a ControlNet following a control video, written once for every backend.

The original system's recipe (Picsart's Text2Video-Zero, and diffusers' documented one): Stable Diffusion's ControlNet
pipeline with cross-frame attention on the UNet and the ControlNet, DDIM (eta 0), and no latent motion; the control
maps move the video. For each batch of videos:
1. read the control video (cut, resampled, resized) and make its control maps (`t2v_fast.annotators`), once;
2. encode the prompts (and negative prompts, for classifier-free guidance);
3. draw one `(1, C, h, w)` noise per video from its own generator and repeat it over the frames;
4. denoise all frames together, each step's ControlNet reading every frame's control map, every frame's self-attention
   reading the first frame's keys and values;
5. decode the latents to frames.
Long videos run 3-5 chunk by chunk (`plan_chunks`), each chunk anchored on frame 0, with the same noise: memory stays
flat with the video's length.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from t2v_fast.core.chunks import plan_chunks
from t2v_fast.core.families import GUIDED
from t2v_fast.core.input_params import read_input
from t2v_fast.core.pipeline import Batch, PreparedInputs, Render, check_finite, timed
from t2v_fast.families.guided.params import GuidedParams
from t2v_fast.families.text2video_zero.pipeline import TextToVideoZeroPipeline


class GuidedPipeline(TextToVideoZeroPipeline):
    """A Text2Video-Zero base with a ControlNet: guided video for requests with a control video, and the base's text
    to video for those without."""

    def __init__(self, *args: Any, depth_model: str | None = None, **kwargs: Any):
        """`depth_model`: the depth annotator's estimator (a preset, a folder or a hub id; default MiDaS DPT-Hybrid)."""
        super().__init__(*args, **kwargs)
        from t2v_fast.annotators import DEFAULT_DEPTH_MODEL

        self.depth_model = depth_model or DEFAULT_DEPTH_MODEL

    def renders(self) -> dict[str, Render]:
        return {**super().renders(), GUIDED.name: self.render_guided}

    def prepare_inputs(self, settings: Any, videos: dict[str, Any], progress: bool) -> PreparedInputs:
        """Step 1: the control video read by the settings' cut, rate and size, its control maps made; the settings'
        unset frames, fps, height and width become the control video's."""
        if videos.get("control") is None:
            return PreparedInputs(settings)
        video, guided = read_input(
            videos["control"], cast(GuidedParams, settings), self.card.native_size, "control video"
        )
        from t2v_fast.annotators import annotate

        maps = annotate(
            video.frames,
            guided.annotator,
            canny_low=guided.canny_low,
            canny_high=guided.canny_high,
            depth_model=self.depth_model,
            device=self.backend.device,
            progress=progress,
        )
        control = torch.from_numpy(maps).permute(0, 3, 1, 2).to(self.backend.device, self.backend.dtype) / 255
        record: dict[str, Any] = {"path": video.source, "sha256": video.sha256}
        if guided.annotator == "depth":
            record["depth_model"] = self.depth_model
        return PreparedInputs(guided, {"control": control}, {"control": record}, maps)

    def render_guided(
        self, batch: Batch, settings: GuidedParams, timings: dict[str, float], progress: bool = True
    ) -> np.ndarray:
        """Steps 3-5 for a batch of videos sharing one control video; uint8 frames `(videos, F, H, W, 3)`."""
        card = self.card
        latent_shape = (
            card.latent_channels,
            settings.height // card.vae_scale_factor,
            settings.width // card.vae_scale_factor,
        )
        first = self._noise(batch, 1, latent_shape)
        control = batch.inputs["control"]
        videos = len(batch.requests)
        scale = torch.tensor(settings.controlnet_scale, dtype=self.backend.dtype, device=self.backend.device)
        chunks = plan_chunks(settings.frames, settings.chunk_size)
        output = np.empty((videos, settings.frames, settings.height, settings.width, 3), dtype=np.uint8)
        description = "denoising" if len(chunks) == 1 else f"denoising {len(chunks)} chunks"
        with tqdm(total=len(chunks) * settings.steps, desc=description, unit="step", disable=not progress) as bar:
            for chunk in chunks:
                with timed(timings, "denoise_s"):
                    scheduler = self.scheduler_for(settings.steps)  # each chunk runs the whole schedule
                    count = len(chunk.frame_ids)
                    latents = first.expand(-1, count, -1, -1, -1) * scheduler.init_noise_sigma
                    maps = control[chunk.frame_ids].expand(videos, -1, -1, -1, -1)
                    conditions = {"control": batch.guider.batch(maps), "controlnet_scale": scale}
                    latents = self._denoise(latents, scheduler.timesteps, batch, scheduler, bar, conditions)
                    check_finite(latents, "latents", self.backend.dtype)
                with timed(timings, "decode_s"):
                    self.decode_chunk(latents, chunk, output)
        return output
