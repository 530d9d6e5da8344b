"""Video editing's parameters: how closely the edit keeps to the input video (image guidance), and chunking; the
input video's cut, and the length, rate and size that follow from it, are every input video's (`InputVideoParams`)."""

from __future__ import annotations

from dataclasses import dataclass

from t2v_fast.core.input_params import InputVideoParams
from t2v_fast.core.params import param
from t2v_fast.families.text2video_zero.params import chunk_size_param

VIDEO_EDITING = "video editing (Instruct-Pix2Pix)"


@dataclass(frozen=True)
class EditParams(InputVideoParams):
    """Settings of one edited video: the input video's (`InputVideoParams`), the image guidance and the chunks."""

    # At least 1: below it diffusers' pipeline silently drops all guidance; 1 keeps the text guidance alone.
    image_guidance: float = param(
        float,
        "image guidance scale: how closely the edit keeps to the input video (>= 1)",
        "Image guidance scale",
        minimum=1.0,
        family_default=True,
        section=VIDEO_EDITING,
    )
    chunk_size: int | None = chunk_size_param()
