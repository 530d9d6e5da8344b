"""Optimisation profiles: the range of shapes (videos, frames, height, width) each network's engine accepts.

Derived from the networks' own axes (`t2v_fast.core.networks`); used to build TensorRT engines (`export`), to give
ONNX Runtime's TensorRT provider its shapes, and to refuse a call outside an engine's profiles before any work.
"""

from __future__ import annotations

from dataclasses import dataclass

from t2v_fast.core.chunks import plan_chunks
from t2v_fast.core.engine_dir import EngineDir
from t2v_fast.core.families import TEXT2VIDEO_ZERO, settings_of
from t2v_fast.core.guidance import GUIDERS
from t2v_fast.core.models import ModelCard
from t2v_fast.core.networks import DECODE_BATCH_SIZE, FAST_NETWORKS, GUIDED_NETWORKS, NETWORKS, dims
from t2v_fast.errors import UserError

Profile = dict[str, list[list[int]]]  # input name -> [min, opt, max] shape
# Networks run a few times per video, on one ranged profile each (video editing's encoder in every export's profiles
# too: those without it build no engine).
RANGED_NETWORKS = ("text_encoder", "vae_decoder", "vae_encoder")


def guidance_conditions(info: ModelCard) -> int:
    """The UNet batch per video with guidance on: the conditions of the model's task's guider (`Task.guidance`), 2
    for classifier-free guidance, 3 for Instruct-Pix2Pix's."""
    return GUIDERS[info.task_record.guidance].CONDITIONS


def unet_frame_counts(info: ModelCard, frames: int) -> tuple[int, ...]:
    """The frame counts of the UNet calls a video of `frames` frames makes at its family's default chunk size (none:
    the whole video in one pass): every chunk's, the last one shorter where the pipeline leaves it so (video editing,
    `plan_chunks(pad_last=False)`; a padded last chunk has the others' count), and Text2Video-Zero's first frame,
    denoised alone."""
    _, defaults, _ = settings_of(info.family_record, info.task_record)
    chunks = {len(chunk.frame_ids) for chunk in plan_chunks(frames, defaults.get("chunk_size"), pad_last=False)}
    return tuple(sorted({1, *chunks} if info.family == TEXT2VIDEO_ZERO.name else chunks))


@dataclass(frozen=True)
class AxisRange:
    minimum: int
    optimum: int
    maximum: int

    @classmethod
    def parse(cls, text: str, name: str) -> AxisRange:
        """`N` (static) or `MIN:OPT:MAX`."""
        try:
            values = [int(v) for v in text.split(":")]
        except ValueError:
            raise UserError(f"--{name} must be N or MIN:OPT:MAX with integers, got {text!r}") from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
            raise UserError(f"--{name} must be N or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
        return cls(*values)

    @property
    def is_fixed(self) -> bool:
        return self.minimum == self.maximum


@dataclass(frozen=True)
class BuildRanges:
    """Ranges of the user-facing quantities; each component's optimisation profiles are derived from them.

    What the pipeline sends (see `pipeline.py`), and so what the profiles must cover: the text encoder gets the unique
    texts of a call, 1 to conditions×videos (`guidance_conditions`: 2, or 3 for video editing); the UNet gets
    videos×conditions with guidance or videos without, and 1 frame (the first frame, denoised alone) or a whole video
    or chunk; the VAE decoder, and video editing's encoder, get 1 to `decode_batch` images per call.
    """

    videos: AxisRange
    frames: AxisRange
    height: AxisRange
    width: AxisRange
    decode_batch: int = DECODE_BATCH_SIZE

    @property
    def is_static(self) -> bool:
        return all(a.is_fixed for a in (self.videos, self.frames, self.height, self.width))

    def _dims(self, info: ModelCard, point: str, unet_batch: int, frames: int, images: int) -> dict[str, int]:
        height, width = getattr(self.height, point), getattr(self.width, point)
        return dims(info, videos=unet_batch, frames=frames, height=height, width=width, images=images)

    def profiles(self, info: ModelCard) -> dict[str, list[Profile]]:
        """Per component, its optimisation profiles (per input: [min, opt, max] shapes).

        Static ranges give the UNet one fixed-shape profile per shape it receives (guidance on and off × each frame
        count of `unet_frame_counts`: at the family's default chunk size, so a static build for video editing serves
        that chunk size only, its last chunk being shorter), so that each can replay a CUDA graph; dynamic ranges give
        one profile that spans them. The text encoder and the VAEs run a few times per video and always get one
        ranged profile. Fast mode's two UNet graphs and guided video's `unet_controlnet` (its control maps at the
        latents' size in pixels) get the UNet's profiles (for every export: those without them build no engine).
        """
        for name, axis in (("height", self.height), ("width", self.width)):
            for value in (axis.minimum, axis.optimum, axis.maximum):
                if value % info.size_multiple:
                    raise UserError(f"--{name} values must be multiples of {info.size_multiple}, got {value}")
        videos, frames, conditions = self.videos, self.frames, guidance_conditions(info)
        images = (1, min(self.decode_batch, frames.optimum * videos.optimum), self.decode_batch)
        text_batch = (1, conditions * videos.optimum, conditions * videos.maximum)
        low, opt, high = (
            self._dims(info, point, batch, 1, image)
            for point, batch, image in zip(("minimum", "optimum", "maximum"), text_batch, images, strict=True)
        )
        ranged = {name: [NETWORKS[name].profile(low, opt, high)] for name in RANGED_NETWORKS}
        if self.is_static:
            batches = (videos.minimum, conditions * videos.minimum)
            counts = unet_frame_counts(info, frames.minimum)
            shapes = sorted({(batch, count) for batch in batches for count in counts})
            fixed = [self._dims(info, "minimum", batch, count, 1) for batch, count in shapes]
            points = [(shape, shape, shape) for shape in fixed]
        else:
            unet_low = self._dims(info, "minimum", videos.minimum, 1, 1)
            unet_opt = self._dims(info, "optimum", conditions * videos.optimum, frames.optimum, 1)
            unet_high = self._dims(info, "maximum", conditions * videos.maximum, frames.maximum, 1)
            points = [(unet_low, unet_opt, unet_high)]
        # Fast mode's graphs take the UNet's calls (and the feature, at the latents' size), guided video's the UNet's
        # and the control maps (at the size in pixels): the UNet's profiles.
        names = ("unet", *FAST_NETWORKS, *GUIDED_NETWORKS)
        unets = {name: [NETWORKS[name].profile(*point) for point in points] for name in names}
        return {**ranged, **unets}


AXES = ("videos", "frames", "height", "width")


def default_ranges(engine_dir: EngineDir, static: bool, given: dict[str, AxisRange] | None = None) -> BuildRanges:
    """Ranges around the export's example shapes: exactly them with `static`, else room for 1-4 videos and from 1
    frame to twice the export's (at least 24) at the export's size; `given` ranges override either. The export's
    frame count is its family's default unless chosen (8 Text2Video-Zero: 1-24 frames; 16 ModelScope: 1-32; video
    editing's chunk size, 8: 1-24)."""
    export, native = engine_dir.export_settings, engine_dir.card.native_size
    assert export.frames is not None  # an export records its resolved frame count
    exported = {
        "videos": export.videos,
        "frames": export.frames,
        "height": export.height or native,
        "width": export.width or native,
    }
    dynamic = {
        "videos": AxisRange(1, export.videos, max(export.videos, 4)),
        "frames": AxisRange(1, export.frames, max(2 * export.frames, 24)),
    }
    ranges: dict[str, AxisRange] = {}
    for axis, value in exported.items():
        fixed = AxisRange(value, value, value)
        ranges[axis] = fixed if static else dynamic.get(axis, fixed)
    # Only axes are keys here; mypy cannot tell that a `**dict` of ranges leaves `decode_batch` (an int) alone.
    return BuildRanges(**{**ranges, **(given or {})})  # type: ignore[arg-type]


def profile_index(profiles: list[Profile], shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The first profile that admits every input shape, or None."""
    for index, profile in enumerate(profiles):
        if all(_within(shapes[name], profile[name]) for name in shapes):
            return index
    return None


def _within(shape: tuple[int, ...], limits: list[list[int]]) -> bool:
    low, _, high = limits
    return len(shape) == len(low) and all(lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True))


def is_fixed(profile: Profile) -> bool:
    return all(limits[0] == limits[2] for limits in profile.values())


def check_in_profiles(component: str, shapes: dict[str, tuple[int, ...]], profiles: list[Profile]) -> int:
    """The profile to run `shapes` with; a shape outside every profile is refused, naming the valid ranges."""
    index = profile_index(profiles, shapes)
    if index is None:
        ranges = "; ".join(
            ", ".join(f"{name} {limits[0]} .. {limits[2]}" for name, limits in p.items() if name in shapes)
            for p in profiles
        )
        given = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        raise UserError(
            f"{component} inputs {given} are outside the engine's profiles ({ranges});"
            " rebuild with wider ranges (t2v-fast build --videos/--frames/--height/--width)"
        )
    return index
