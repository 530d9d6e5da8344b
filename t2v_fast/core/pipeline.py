"""What every video pipeline does the same way, whatever its family and backend.

A family's pipeline (`TextToVideoZeroPipeline`, `ModelScopePipeline`) differs only in `render`, the way it turns
noise into latents; everything around it is here, written once: resolving the parameters for the model, one request
per video with the seed rule and its generator, encoding the prompts, the task's guidance around the backend's UNet
(`t2v_fast.core.guidance`), decoding in slices of frames, checks for overflow, and the sidecar metadata. Quality
control is not here: it is a night's work (`t2v_fast.bulk`), not part of making a video.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import CLIPTokenizer

from t2v_fast._version import __version__
from t2v_fast.core.chunks import Chunk
from t2v_fast.core.deepcache import DeepCache
from t2v_fast.core.families import GUIDED, Task, settings_of, task_of_inputs
from t2v_fast.core.guidance import GUIDERS, Guider
from t2v_fast.core.models import Scheduler, dtype_name
from t2v_fast.core.networks import DECODE_BATCH_SIZE
from t2v_fast.core.params import CommonParams, ParamProblem, ParamRequest, raise_problems, request_problems
from t2v_fast.core.video import Video
from t2v_fast.errors import NumericalError, UserError
from t2v_fast.runtime import ModelBackend

logger = logging.getLogger("t2v_fast")


@dataclass(frozen=True)
class VideoRequest:
    prompt: str
    negative_prompt: str
    seed: int


@dataclass(frozen=True)
class Batch:
    """Videos denoised together: their requests, text embeddings (as the guider lays the UNet batch out), guidance,
    and one generator per video, which every random draw for that video comes from."""

    requests: Sequence[VideoRequest]
    text_embeddings: torch.Tensor
    guider: Guider
    generators: list[torch.Generator]
    deep_cache: DeepCache | None = None  # fast mode's schedule; None: every step runs the whole UNet
    inputs: Mapping[str, torch.Tensor] = field(default_factory=dict)  # the task's input videos as tensors


@dataclass(frozen=True)
class PreparedInputs:
    """A request's input videos, read: the settings they complete (a guided video's length and size are its control
    video's), the tensors the render takes, what the sidecar records of them, and the control maps followed."""

    settings: Any
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    records: Mapping[str, Any] = field(default_factory=dict)
    control_maps: np.ndarray | None = None


# A task's loop: a batch and its settings in, uint8 frames `(videos, F, H, W, 3)` out.
Render = Callable[["Batch", Any, dict[str, float], bool], np.ndarray]


def expand_requests(
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None,
    seed: int | Sequence[int] | None,
    videos_per_prompt: int,
) -> list[VideoRequest]:
    """One request per video, prompt-major (see `plan_requests`); a `UserError` names every problem."""
    requests, problems = plan_requests(prompt, negative_prompt, seed, videos_per_prompt)
    raise_problems(problems)
    return requests


def plan_requests(
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None,
    seed: int | Sequence[int] | None,
    videos_per_prompt: int,
) -> tuple[list[VideoRequest], list[ParamProblem]]:
    """One request per video, prompt-major, or every problem found. Seed rule: video k of the call (counting from 0)
    gets `seed + k`.

    A list of seeds gives one seed per video instead; no seed draws a random base seed (recorded in the metadata).
    So video k of a batch equals generating its prompt alone with `seed + k`.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        return [], [ParamProblem(("prompt",), "prompt must be a string or a non-empty list of strings")]
    problems = [p for text in prompts for p in request_problems(prompt=text)]
    problems += request_problems(videos_per_prompt=videos_per_prompt)
    if negative_prompt is None or isinstance(negative_prompt, str):
        negatives = [negative_prompt or ""] * len(prompts)
    else:
        negatives = list(negative_prompt)
        if len(negatives) != len(prompts):
            problems.append(
                ParamProblem(("negative_prompt",), f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
            )
    problems += [p for text in negatives for p in request_problems(negative_prompt=text)]
    if problems and any("videos_per_prompt" in p.fields for p in problems):
        return [], problems
    count = len(prompts) * videos_per_prompt
    if seed is None:
        seed = secrets.randbelow(2**31)
    # A bool is an int to the type system, yet no seed: `list` refuses it (TypeError), as it always did.
    seeds = (
        [seed + k for k in range(count)]
        if isinstance(seed, int) and not isinstance(seed, bool)
        else list(cast(Sequence[int], seed))
    )
    if len(seeds) != count:
        problems.append(ParamProblem(("seed",), f"got {len(seeds)} seeds for {count} videos"))
    problems += [p for value in seeds for p in request_problems(seed=value)]
    if problems:
        return [], problems
    pairs = [(p, n) for p, n in zip(prompts, negatives, strict=True) for _ in range(videos_per_prompt)]
    return [VideoRequest(p, n, s) for (p, n), s in zip(pairs, seeds, strict=True)], []


class VideoPipeline(ABC):
    """A family's pipeline over any backend. Call `generate` (a list of videos) or `generate_video` (one)."""

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        scheduler: Scheduler,
        backend: ModelBackend,
        decode_batch_size: int = DECODE_BATCH_SIZE,
    ):
        self.tokenizer = tokenizer
        self.scheduler = scheduler  # the model's; each render steps a copy of its own (`scheduler_for`)
        self.backend = backend
        self.decode_batch_size = decode_batch_size
        self.card = backend.card.with_runtime(self.scheduler, tokenizer)

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] | None = None,
        seed: int | Sequence[int] | None = None,
        videos_per_prompt: int = 1,
        settings: CommonParams | None = None,
        progress: bool = True,
        control: str | Path | np.ndarray | None = None,
        video: str | Path | np.ndarray | None = None,
        **params: Any,
    ) -> list[Video]:
        """Generate `videos_per_prompt` videos per prompt, prompt-major; always a list.

        `negative_prompt`: one for all prompts or one per prompt. `seed`: video k gets `seed + k` (random when None),
        or a list with one seed per video. `params` are the generation parameters by name (None or absent: the
        model's default), declared with their ranges and defaults in `t2v_fast.core.params.CommonParams` and in the
        family's own (`t2v_fast.families.text2video_zero.params`): `frames` per video, scheduler `steps`,
        classifier-free `guidance` (<= 1: off), `height`/`width` in pixels (default: the model's native size), `fps`
        of the MP4; for Text2Video-Zero also `motion_x`/`motion_y`, `t0`/`t1` and `chunk_size`. Another family
        refuses those with a `UserError`. `settings`, instead of `params`: settings already resolved for this model
        (`ModelCard.resolve`), as a night's manifest rows carry them.

        `control`, for guided video (a pipeline loaded with a ControlNet): the video to follow, a file (MP4, WebM,
        GIF), a folder of PNG frames or a uint8 array `(F, H, W, 3)`; its frames become control maps by the
        `annotator` parameter, and the video takes their number, rate and size unless `frames`, `fps`, `height` and
        `width` say otherwise (`t2v_fast.families.guided.params`).

        `video`, for video editing (an Instruct-Pix2Pix model): the video to edit by the instruction `prompt`, from
        the same sources; it sets the length, rate and size likewise, and `image_guidance` how closely the edit keeps
        to it (`t2v_fast.families.instruct_pix2pix.params`).
        """
        started = time.perf_counter()
        inputs = {"control": control, "video": video}
        task = task_of_inputs(inputs)
        run = self.renders().get(task.name)
        if run is None:
            raise UserError(self._cannot_run(task))
        settings_class = settings_of(self.card.family_record, task)[0]
        if settings is not None and params:
            raise UserError("give either resolved settings or parameters, not both")
        if settings is not None and type(settings) is not settings_class:
            kind = settings_class.__name__
            raise UserError(f"settings are {type(settings).__name__}, and this request takes {kind}")
        problems: list[ParamProblem] = []
        if settings is None:
            settings, problems = self.card.check(ParamRequest.of(**params), task)
        requests, request_issues = plan_requests(prompt, negative_prompt, seed, videos_per_prompt)
        raise_problems([*request_issues, *problems])  # every problem at once, the request's first
        assert settings is not None
        prepared = self.prepare_inputs(settings, inputs, progress)
        settings = prepared.settings
        check_fast_mode = getattr(self.backend, "check_fast_mode", None)  # engine backends: graphs for one branch
        if settings.cache_interval > 1 and check_fast_mode is not None:
            check_fast_mode(settings.cache_branch)  # before any work
        timings = {"encode_text_s": 0.0, "denoise_s": 0.0, "decode_s": 0.0}

        guider = GUIDERS[task.guidance].of(settings)
        with timed(timings, "encode_text_s"):
            text_embeddings = self.encode_prompts(requests, guider)
        generators = [torch.Generator().manual_seed(r.seed) for r in requests]
        fast = DeepCache(settings.cache_interval, settings.cache_branch) if settings.cache_interval > 1 else None
        batch = Batch(requests, text_embeddings, guider, generators, fast, prepared.tensors)
        frames = run(batch, settings, timings, progress)
        timings["total_s"] = time.perf_counter() - started

        metadata = [self._metadata(request, settings, timings, len(requests), task) for request in requests]
        return [
            Video(frames=frames[i], metadata={**meta, **prepared.records}, control=prepared.control_maps)
            for i, meta in enumerate(metadata)
        ]

    def _cannot_run(self, task: Task) -> str:
        """Why this pipeline does not run `task`: another family's, or its own needs an input video
        (`ModelCard.check`), or guided video without a ControlNet."""
        problems = self.card.check(ParamRequest(), task)[1]
        if problems:
            return str(problems[0])
        engine_dir = getattr(self.backend, "engine_dir", None)
        if engine_dir is not None:  # an engine folder brings its ControlNet: it says how to export one
            engine_dir.check_guided()
        return f"{task.title} needs a ControlNet: load the pipeline with one (controlnet=...)"

    def generate_video(self, prompt: str, **options: Any) -> Video:
        """One video of one prompt: `generate`'s keyword arguments, except `videos_per_prompt`."""
        if not isinstance(prompt, str) or options.get("videos_per_prompt", 1) != 1:
            raise UserError("generate_video makes one video of one prompt; use generate for several")
        return self.generate(prompt, **options)[0]

    def encode_prompts(self, requests: Sequence[VideoRequest], guider: Guider) -> torch.Tensor:
        """Per-video text embeddings, laid out as the guider's UNet batch reads them (`Guider.texts`)."""
        texts = guider.texts([r.prompt for r in requests], [r.negative_prompt for r in requests])
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

    @abstractmethod
    def render(self, batch: Batch, settings: Any, timings: dict[str, float], progress: bool = True) -> np.ndarray:
        """Noise to decoded frames for a batch of videos, uint8 `(videos, F, H, W, 3)`: the family's algorithm.
        `settings` are the family's (`Family.params`)."""

    def renders(self) -> dict[str, Render]:
        """The render of each task this pipeline runs: its checkpoint's own (`render`); a pipeline with more tasks
        adds theirs."""
        return {self.card.task: self.render}

    def prepare_inputs(self, settings: Any, videos: dict[str, Any], progress: bool) -> PreparedInputs:
        """A task's input videos read (`Task.input_videos`), before any model work. Text to video has none."""
        return PreparedInputs(settings)

    def check_unet_shapes(self, batch: Batch, frame_counts: set[int], sample_shape: tuple[int, ...]) -> None:
        """Refuse, before any work, UNet calls outside a TensorRT engine's profiles: one per frame count, of samples
        `(guidance batch, frames, *sample_shape)`. Other backends take any shape."""
        check = getattr(self.backend, "check_unet_shapes", None)
        if check is not None:
            text_shape = tuple(batch.text_embeddings.shape)
            shapes = [(text_shape[0], n, *sample_shape) for n in sorted(frame_counts)]
            check([{"sample": sample, "encoder_hidden_states": text_shape} for sample in shapes])

    def scheduler_for(self, steps: int) -> Scheduler:
        """A fresh copy of the model's scheduler set to `steps` steps: stepping changes a scheduler's state, and the
        model's own stays as loaded for the next request."""
        scheduler: Scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        return scheduler

    def _noise(self, batch: Batch, frames: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Gaussian noise `(videos, frames, *shape)`, drawn on the CPU so a seed gives the same video on any device."""
        noise = torch.stack([torch.randn((frames, *shape), generator=g) for g in batch.generators])
        return noise.to(self.backend.device, self.backend.dtype)

    def _denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        batch: Batch,
        scheduler: Scheduler,
        bar: tqdm | None,
        conditions: Mapping[str, torch.Tensor] | None = None,
        image_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scheduler steps with the batch's guidance around the backend's UNet. A stochastic scheduler (Euler
        ancestral) draws each video's step noise from that video's generator, so the seed rule holds for it too.

        In fast mode, the deep feature is cached by this loop only: each call (a phase of the family's algorithm, a
        chunk) starts with a full step at its own batch shape (`t2v_fast.core.deepcache`). `conditions` are a guided
        step's further inputs (control maps as the guider lays the batch out, the ControlNet's scale); `image_latents`
        are video editing's input frames' latents (as the guider lays them out), the UNet's channels after the scaled
        latents."""
        step_options = {"generator": batch.generators} if _takes_generator(scheduler) else {}
        cache, feature = batch.deep_cache, None
        for step, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(batch.guider.batch(latents), t)
            if image_latents is not None:
                model_input = torch.cat([model_input, image_latents], dim=2)
            unet_inputs = {"sample": model_input, "timestep": t, "encoder_hidden_states": batch.text_embeddings}
            if conditions:
                predicted = self.backend.predict_noise_guided(**unet_inputs, **conditions)
            elif cache is None:
                predicted = self.backend.predict_noise(**unet_inputs)
            elif cache.is_full_step(step):
                predicted, feature = self.backend.predict_noise_caching(**unet_inputs, branch=cache.branch)
            else:
                predicted = self.backend.predict_noise_cached(**unet_inputs, feature=feature, branch=cache.branch)
            noise = batch.guider.combine(predicted)
            latents = scheduler.step(noise, t, latents, **step_options).prev_sample
            if bar is not None:
                bar.update()
        return latents

    def decode_chunk(self, latents: torch.Tensor, chunk: Chunk, output: np.ndarray) -> None:
        """Decode the frames a chunk keeps into their place in `output` `(videos, F, H, W, 3)`."""
        own_end = None if chunk.keep_count is None else chunk.keep_from + chunk.keep_count
        kept = latents[:, chunk.keep_from : own_end]
        output[:, chunk.output_start : chunk.output_start + kept.shape[1]] = self.decode_video(kept)

    def decode_video(self, latents: torch.Tensor) -> np.ndarray:
        """Latents `(videos, F, C, h, w)` -> uint8 frames `(videos, F, H, W, 3)`, a few frames per VAE call."""
        flat = latents.flatten(0, 1)
        decoded = []
        for start in range(0, len(flat), self.decode_batch_size):
            images = self.backend.decode_latents(flat[start : start + self.decode_batch_size])
            check_finite(images, "decoded frames", self.backend.dtype)
            pixels = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            decoded.append(pixels.permute(0, 2, 3, 1).cpu().numpy())
        frames = np.concatenate(decoded).reshape(*latents.shape[:2], *decoded[0].shape[1:])
        black = np.flatnonzero(frames.reshape(-1, frames[0, 0].size).max(axis=1) == 0)
        if black.size:
            video, frame = divmod(int(black[0]), latents.shape[1])
            raise NumericalError(
                f"frame {frame} of video {video} is entirely black, a sign of overflow in"
                f" {dtype_name(self.backend.dtype)}; try another dtype (float32, or bfloat16 on GPUs)"
            )
        return frames

    def _metadata(
        self, request: VideoRequest, settings: CommonParams, timings: dict[str, float], batch: int, task: Task
    ) -> dict[str, Any]:
        card = self.card
        controlnet = {"controlnet": {"id": card.controlnet, "weights_sha256": card.controlnet_sha256}}
        return {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": request.seed,
            "params": settings.as_dict(),
            "model": {
                "id": card.model_id,
                "family": card.family,
                "task": task.name,
                "weights_sha256": card.weights_sha256,
                **(controlnet if task.name == GUIDED.name else {}),
            },
            "backend": self.backend.name,
            **self.backend.placement,
            "dtype": dtype_name(self.backend.dtype),
            "timings": {**{k: round(v, 4) for k, v in timings.items()}, "videos_in_batch": batch},
            "t2v_fast_version": __version__,
        }


def check_finite(tensor: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    if not torch.isfinite(tensor).all():
        raise NumericalError(
            f"NaN or Inf in the {what}, a sign of overflow in {dtype_name(dtype)}; try another dtype"
            " (float32, or bfloat16 on GPUs)"
        )


@contextmanager
def timed(timings: dict[str, float], key: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - started


def _takes_generator(scheduler: Scheduler) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters
