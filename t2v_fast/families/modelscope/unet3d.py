"""ModelScope's 3D UNet seen through the same interface as Text2Video-Zero's: `(videos, frames, C, h, w)` in and out.

`VideoUNet3D.forward` is diffusers' `UNet3DConditionModel.forward` for that layout, written out so that it exports:
- per-frame copies of the timestep embedding and of the text embeddings are `expand` + `flatten` (diffusers uses
  `repeat_interleave`, which torch's ONNX exporter translates into an Expand that fails at run time);
- the upsamplers always get their skip connection's size, so one graph serves every latent size, odd ones included
  (diffusers decides that in Python from the input's shape, a choice an exported graph cannot keep);
- the layout change to diffusers' `(videos, C, frames, h, w)` is not needed: the UNet folds frames into the batch
  first thing anyway.
The tests hold it to diffusers' own forward (and the pipeline to `TextToVideoSDPipeline`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from t2v_fast.core.deepcache import BlockContext

if TYPE_CHECKING:
    from diffusers.models import UNet3DConditionModel


def per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """`(videos, ...)` -> `(videos·frames, ...)`, each video's row repeated for its frames (frames contiguous)."""
    return x[:, None].expand(-1, frames, *x.shape[1:]).flatten(0, 1)


class VideoUNet3D(nn.Module):
    """A `UNet3DConditionModel` taking `(videos, frames, C, h, w)` latents, a scalar timestep and per-video text."""

    def __init__(self, unet: UNet3DConditionModel):
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        unet = self.unet
        x, parts = self.embed(sample, timestep, encoder_hidden_states)
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in unet.down_blocks:
            text = {"encoder_hidden_states": parts.text} if getattr(block, "has_cross_attention", False) else {}
            x, block_skips = block(hidden_states=x, temb=parts.temb, num_frames=parts.frames, **text)
            skips += block_skips

        x = self.middle(x, parts)

        for block in unet.up_blocks:
            resnets = len(cast(nn.ModuleList, block.resnets))  # an up block's; ModuleList items are plain Modules
            block_skips, skips = skips[-resnets:], skips[:-resnets]
            upsample_size = skips[-1].shape[2:] if skips else None  # the last block does not upsample
            text = {"encoder_hidden_states": parts.text} if getattr(block, "has_cross_attention", False) else {}
            x = block(
                hidden_states=x,
                temb=parts.temb,
                res_hidden_states_tuple=block_skips,
                upsample_size=upsample_size,
                num_frames=parts.frames,
                **text,
            )
        return self.finish(x, parts)

    # The steps around the blocks, shared by `forward` and fast mode's split (`t2v_fast.core.deepcache`).

    def embed(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, BlockContext]:
        """Time embedding and text per frame, the input convolution and the temporal transformer."""
        unet = self.unet
        videos, frames = sample.shape[:2]
        time_embedding = unet.time_proj(timestep.reshape(1).expand(videos)).to(sample.dtype)
        emb = per_frame(unet.time_embedding(time_embedding), frames)
        context = BlockContext(videos, frames, emb, per_frame(encoder_hidden_states, frames), None)
        x = unet.conv_in(sample.flatten(0, 1))
        return unet.transformer_in(x, num_frames=frames, return_dict=False)[0], context

    def middle(self, hidden: torch.Tensor, context: BlockContext) -> torch.Tensor:
        return self.unet.mid_block(hidden, context.temb, encoder_hidden_states=context.text, num_frames=context.frames)

    def finish(self, hidden: torch.Tensor, context: BlockContext) -> torch.Tensor:
        unet = self.unet
        return unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden))).unflatten(0, (context.videos, context.frames))


class TokenChunkedFeedForward(nn.Module):
    """A transformer block's feed-forward network run on at most `max_tokens` tokens per call.

    It acts on each token alone, so the result is that of one call; what changes is the peak memory of its 4×-wide
    hidden layer, bounded by `max_tokens` instead of growing with frames × pixels.
    """

    def __init__(self, feed_forward: nn.Module, max_tokens: int):
        super().__init__()
        self.feed_forward = feed_forward
        self.max_tokens = max_tokens

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = hidden_states.flatten(0, -2)
        if len(tokens) <= self.max_tokens:
            return self.feed_forward(hidden_states)
        out = torch.cat([self.feed_forward(part) for part in tokens.split(self.max_tokens)])
        return out.reshape(*hidden_states.shape[:-1], -1)


def chunk_feed_forward(unet: nn.Module, max_tokens: int | None) -> None:
    """Run every transformer block's feed-forward network of a diffusers UNet `max_tokens` tokens at a time (None:
    all at once). Calling it again changes the chunk size."""
    for module in list(unet.modules()):
        feed_forward = getattr(module, "ff", None)
        if isinstance(feed_forward, TokenChunkedFeedForward):
            feed_forward.max_tokens = max_tokens or sys.maxsize
        elif isinstance(feed_forward, nn.Module):
            module.ff = TokenChunkedFeedForward(feed_forward, max_tokens or sys.maxsize)
