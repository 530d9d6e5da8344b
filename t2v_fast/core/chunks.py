"""Chunks: long videos denoised a few frames per UNet pass, each pass anchored on frame 0, so that memory stays flat
with the video's length (Text2Video-Zero's documented procedure for long videos, which every loop follows)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """One UNet pass: the frame ids fed to the UNet (anchor first) and which of the outputs to keep."""

    frame_ids: list[int]
    keep_from: int
    output_start: int
    keep_count: int | None = None  # None: every output from `keep_from` on


def plan_chunks(frames: int, chunk_size: int | None, pad_last: bool = True) -> list[Chunk]:
    """Split a video into UNet passes of exactly `chunk_size` frames, as diffusers documents for long videos.

    Each chunk is `[0] + its own frame ids`: frame id 0 is the anchor whose keys and values all frames attend to, and
    its output is dropped. Frame ids stay absolute, so the motion continues from chunk to chunk. The last chunk's own
    frames are followed by frames of the chunk before (recomputed, dropped), so that every pass has one shape: static
    TensorRT engines and compiled graphs then serve every chunk. Its own frames stay first, so they draw the same
    noise as the documented procedure's shorter last chunk, and each frame depends only on itself and the anchor.
    `pad_last=False` leaves the last chunk shorter, as the documented procedure runs it: a stochastic scheduler draws
    each step's noise for the whole chunk, so filler frames would change the chunk's own (video editing).
    """
    if chunk_size is None or chunk_size >= frames:
        return [Chunk(frame_ids=list(range(frames)), keep_from=0, output_start=0)]
    per_chunk = chunk_size - 1
    chunks = []
    for start in range(0, frames, per_chunk):
        own = list(range(start, min(start + per_chunk, frames)))
        filler = list(range(start - (per_chunk - len(own)), start)) if pad_last else []
        chunks.append(Chunk(frame_ids=[0, *own, *filler], keep_from=1, output_start=start, keep_count=len(own)))
    return chunks
