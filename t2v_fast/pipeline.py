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

import logging
import secrets
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm
from transformers import CLIPTokenizer

from . import qc
from ._version import __version__
from .errors import NumericalError, UserError
from .models import ModelSpec, dtype_name
from .motion import forward_diffuse, warp_latents
from .networks import DECODE_BATCH_SIZE
from .params import GenerationParams, raise_problems, request_problems
from .runtime import ModelBackend
from .schedule import StepPlan
from .video import Video

logger = logging.getLogger("t2v_fast")
DEFAULTS = GenerationParams()


@dataclass(frozen=True)
class VideoRequest:
    prompt: str
    negative_prompt: str
    seed: int


@dataclass(frozen=True)
class Chunk:
    """One pass of steps 3-5: frame ids fed to the UNet (anchor first) and which of the outputs to keep."""

    frame_ids: list[int]
    keep_from: int
    output_start: int


def plan_chunks(frames: int, chunk_size: int | None) -> list[Chunk]:
    """Split a video into UNet passes of at most `chunk_size` frames, as diffusers documents for long videos.

    Each chunk is `[0] + its own frame ids`: frame id 0 is the anchor whose keys and values all frames attend to, and
    its output is dropped. Frame ids stay absolute, so the motion continues from chunk to chunk.
    """
    if chunk_size is None or chunk_size >= frames:
        return [Chunk(frame_ids=list(range(frames)), keep_from=0, output_start=0)]
    starts = range(0, frames, chunk_size - 1)
    return [
        Chunk(frame_ids=[0, *range(start, min(start + chunk_size - 1, frames))], keep_from=1, output_start=start)
        for start in starts
    ]


def expand_requests(
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None,
    seed: int | Sequence[int] | None,
    videos_per_prompt: int,
) -> list[VideoRequest]:
    """One request per video, prompt-major. Seed rule: video k of the call (counting from 0) gets `seed + k`.

    A list of seeds gives one seed per video instead; no seed draws a random base seed (recorded in the metadata).
    So video k of a batch equals generating its prompt alone with `seed + k`.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise UserError("prompt must be a string or a non-empty list of strings")
    raise_problems(request_problems(videos_per_prompt=videos_per_prompt))
    if negative_prompt is None or isinstance(negative_prompt, str):
        negatives = [negative_prompt or ""] * len(prompts)
    else:
        negatives = list(negative_prompt)
        if len(negatives) != len(prompts):
            raise UserError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
    count = len(prompts) * videos_per_prompt
    if seed is None:
        seed = secrets.randbelow(2**31)
    seeds = [seed + k for k in range(count)] if isinstance(seed, int) and not isinstance(seed, bool) else list(seed)
    if len(seeds) != count:
        raise UserError(f"got {len(seeds)} seeds for {count} videos")
    problems = [p for text in prompts for p in request_problems(prompt=text)]
    problems += [p for text in negatives for p in request_problems(negative_prompt=text)]
    problems += [p for value in seeds for p in request_problems(seed=value)]
    raise_problems(problems)
    pairs = [(p, n) for p, n in zip(prompts, negatives, strict=True) for _ in range(videos_per_prompt)]
    return [VideoRequest(p, n, s) for (p, n), s in zip(pairs, seeds, strict=True)]


class TextToVideoZeroPipeline:
    """Text2Video-Zero over any backend. Call `generate` (a list of videos) or `generate_video` (one)."""

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
        backend: ModelBackend,
        decode_batch_size: int = DECODE_BATCH_SIZE,
    ):
        self.tokenizer = tokenizer
        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.backend = backend
        self.decode_batch_size = decode_batch_size
        self.spec = ModelSpec.from_info(backend.info, self.scheduler, tokenizer)

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] | None = None,
        seed: int | Sequence[int] | None = None,
        videos_per_prompt: int = 1,
        frames: int = DEFAULTS.frames,
        steps: int = DEFAULTS.steps,
        guidance: float = DEFAULTS.guidance,
        height: int | None = None,
        width: int | None = None,
        motion_x: float = DEFAULTS.motion_x,
        motion_y: float = DEFAULTS.motion_y,
        t0: int | None = None,
        t1: int | None = None,
        chunk_size: int | None = None,
        fps: float = DEFAULTS.fps,
        progress: bool = True,
    ) -> list[Video]:
        """Generate `videos_per_prompt` videos per prompt, prompt-major; always a list.

        `negative_prompt`: one for all prompts or one per prompt. `seed`: video k gets `seed + k` (random when None),
        or a list with one seed per video. `frames` per video, DDIM `steps`, classifier-free `guidance` (<= 1: off),
        `height`/`width` in pixels (default: the model's native size; multiples of its VAE scale, 8), `motion_x`/
        `motion_y` translation per frame in 1/512 of the frame, `t0`/`t1` steps counted from the end (default: the
        reference's 44/47 of 50, scaled), `chunk_size` frames per UNet pass for long videos, `fps` of the MP4.
        """
        started = time.perf_counter()
        settings = GenerationParams(
            frames, steps, guidance, height, width, motion_x, motion_y, t0, t1, chunk_size, fps
        ).resolve(self.spec)
        requests = expand_requests(prompt, negative_prompt, seed, videos_per_prompt)
        timings = {"encode_text_s": 0.0, "denoise_s": 0.0, "decode_s": 0.0}

        with _timed(timings, "encode_text_s"):
            text_embeddings = self.encode_prompts(requests, settings.uses_guidance)
        frames = self.render(requests, settings, text_embeddings, timings, progress)
        timings["total_s"] = time.perf_counter() - started

        return [
            Video(frames=frames[i], metadata=self._metadata(request, settings, timings, len(requests), frames[i]))
            for i, request in enumerate(requests)
        ]

    def generate_video(self, prompt: str, **options: Any) -> Video:
        """One video of one prompt: `generate`'s keyword arguments, except `videos_per_prompt`."""
        if not isinstance(prompt, str) or options.get("videos_per_prompt", 1) != 1:
            raise UserError("generate_video makes one video of one prompt; use generate for several")
        return self.generate(prompt, **options)[0]

    def encode_prompts(self, requests: Sequence[VideoRequest], guidance: bool) -> torch.Tensor:
        """Per-video text embeddings; with guidance, `[negatives..., prompts...]` as the UNet batch expects."""
        negatives = [r.negative_prompt for r in requests] if guidance else []
        texts = negatives + [r.prompt for r in requests]
        unique = list(dict.fromkeys(texts))
        tokens = self.tokenizer(
            unique,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        for text, length in zip(unique, self.tokenizer(unique, return_length=True)["length"], strict=True):
            if length > self.tokenizer.model_max_length:
                logger.warning("prompt truncated to %d CLIP tokens: %.60r...", self.tokenizer.model_max_length, text)
        embeddings = self.backend.encode_text(tokens.input_ids).to(self.backend.dtype)
        return embeddings[[unique.index(text) for text in texts]]

    def render(
        self,
        requests: Sequence[VideoRequest],
        settings: GenerationParams,
        text_embeddings: torch.Tensor,
        timings: dict[str, float],
        progress: bool = True,
    ) -> np.ndarray:
        """Steps 2-5 of the module docstring for a batch of videos; returns uint8 frames `(videos, F, H, W, 3)`."""
        plan = StepPlan.build(self.scheduler, settings.steps, settings.t0, settings.t1)
        chunks = plan_chunks(settings.frames, settings.chunk_size)
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(settings.steps)
        info = self.backend.info
        latent_shape = (
            info.latent_channels,
            settings.height // info.vae_scale_factor,
            settings.width // info.vae_scale_factor,
        )

        generators = [torch.Generator().manual_seed(r.seed) for r in requests]
        first_frame = self._noise(generators, 1, latent_shape) * scheduler.init_noise_sigma
        noise_state = [g.get_state() for g in generators]

        total_steps = len(plan.to_t1) + len(plan.t1_to_t0) + len(chunks) * len(plan.from_t1)
        output = np.empty((len(requests), settings.frames, settings.height, settings.width, 3), dtype=np.uint8)
        with tqdm(total=total_steps, desc="denoising", unit="step", disable=not progress) as bar:
            with _timed(timings, "denoise_s"):
                anchor_t1 = self._denoise(first_frame, plan.to_t1, text_embeddings, settings, scheduler, bar)
                anchor_t0 = self._denoise(anchor_t1, plan.t1_to_t0, text_embeddings, settings, scheduler, bar)
            for chunk in chunks:
                with _timed(timings, "denoise_s"):
                    # Every chunk draws its re-noising noise as if its generator had just drawn the first frame.
                    for generator, state in zip(generators, noise_state, strict=True):
                        generator.set_state(state)
                    moving_ids = chunk.frame_ids[1:]
                    noise = self._noise(generators, len(moving_ids), latent_shape)
                    moved = warp_latents(anchor_t0[:, 0], moving_ids, settings.motion_x, settings.motion_y)
                    renoised = forward_diffuse(moved, noise, scheduler.alphas, plan.timestep_t0, plan.timestep_t1)
                    latents = torch.cat([anchor_t1, renoised], dim=1)
                    latents = self._denoise(latents, plan.from_t1, text_embeddings, settings, scheduler, bar)
                    _check_finite(latents, "latents", self.backend.dtype)
                with _timed(timings, "decode_s"):
                    kept = latents[:, chunk.keep_from :]
                    stop = chunk.output_start + kept.shape[1]
                    output[:, chunk.output_start : stop] = self.decode_video(kept)
        return output

    def _noise(self, generators: Sequence[torch.Generator], frames: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Gaussian noise `(videos, frames, *shape)`, drawn on the CPU so a seed gives the same video on any device."""
        noise = torch.stack([torch.randn((frames, *shape), generator=g) for g in generators])
        return noise.to(self.backend.device, self.backend.dtype)

    def _denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        settings: GenerationParams,
        scheduler: DDIMScheduler,
        bar: tqdm,
    ) -> torch.Tensor:
        """DDIM steps with classifier-free guidance; the UNet batch is `[unconditional..., conditional...]`."""
        for t in timesteps:
            model_input = torch.cat([latents, latents]) if settings.uses_guidance else latents
            noise = self.backend.predict_noise(model_input, t, text_embeddings)
            if settings.uses_guidance:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + settings.guidance * (conditional - unconditional)
            latents = scheduler.step(noise, t, latents).prev_sample
            bar.update()
        return latents

    def decode_video(self, latents: torch.Tensor) -> np.ndarray:
        """Latents `(videos, F, C, h, w)` -> uint8 frames `(videos, F, H, W, 3)`, a few frames per VAE call."""
        flat = latents.flatten(0, 1)
        frames = []
        for start in range(0, len(flat), self.decode_batch_size):
            images = self.backend.decode_latents(flat[start : start + self.decode_batch_size])
            _check_finite(images, "decoded frames", self.backend.dtype)
            pixels = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            frames.append(pixels.permute(0, 2, 3, 1).cpu().numpy())
        frames = np.concatenate(frames).reshape(*latents.shape[:2], *frames[0].shape[1:])
        black = np.flatnonzero(frames.reshape(-1, frames[0, 0].size).max(axis=1) == 0)
        if black.size:
            video, frame = divmod(int(black[0]), latents.shape[1])
            raise NumericalError(
                f"frame {frame} of video {video} is entirely black, a sign of overflow in"
                f" {dtype_name(self.backend.dtype)}; try another dtype (float32, or bfloat16 on GPUs)"
            )
        return frames

    def _metadata(
        self,
        request: VideoRequest,
        settings: GenerationParams,
        timings: dict[str, float],
        batch: int,
        frames: np.ndarray,
    ) -> dict[str, Any]:
        info = self.backend.info
        return {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": request.seed,
            "params": settings.as_dict(),
            "model": {"id": info.model_id, "weights_sha256": info.weights_sha256},
            "backend": self.backend.name,
            **self.backend.placement,
            "dtype": dtype_name(self.backend.dtype),
            "timings": {**{k: round(v, 4) for k, v in timings.items()}, "videos_in_batch": batch},
            "qc": qc.measure(frames),
            "t2v_fast_version": __version__,
        }


def _check_finite(tensor: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    if not torch.isfinite(tensor).all():
        raise NumericalError(
            f"NaN or Inf in the {what}, a sign of overflow in {dtype_name(dtype)}; try another dtype"
            " (float32, or bfloat16 on GPUs)"
        )


@contextmanager
def _timed(timings: dict[str, float], key: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[key] += time.perf_counter() - started
