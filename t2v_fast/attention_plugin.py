"""Cross-frame attention: every frame's self-attention reads the keys and values of its own video's first frame.

Layout contract (set up by `VideoUNet`): the UNet's batch is `videos × frames` with each video's frames contiguous, and
the text embeddings come once per video (batch `videos`). The frame count arrives as `num_frames` through
`cross_attention_kwargs`, taken from the input's shape, never a Python constant, so the graph exports with a dynamic
number of frames and videos.

Frames are folded into the query's sequence axis: `(videos·frames, tokens, C) -> (videos, frames·tokens, C)`. A
softmax over keys is per query row, so attending the folded queries to one video's keys and values is exactly per-frame
attention, yet keys and values are projected once per video (first frame only, or text) instead of once per frame.
It stays plain MatMul-Softmax-MatMul (`scaled_dot_product_attention`) in ONNX, which ONNX Runtime runs and TensorRT's
Myelin compiler fuses into its flash-attention kernels; no custom TensorRT plugin is needed for that reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from t2v_fast.core.deepcache import BlockContext
from t2v_fast.errors import UserError

if TYPE_CHECKING:
    from diffusers.models import UNet2DConditionModel


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class CrossFrameAttnProcessor:
    """Attention processor for diffusers' `Attention` implementing Text2Video-Zero's cross-frame attention."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("cross-frame attention does not support attention masks")
        # (videos·frames, tokens, C) -> (videos, frames, tokens, C)
        frames = hidden_states.unflatten(0, (-1, num_frames))
        if encoder_hidden_states is None:
            context = frames[:, 0]
        else:
            context = (
                attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            )
        query = attn.to_q(frames.flatten(1, 2))
        key = attn.to_k(context)
        value = attn.to_v(context)

        out = F.scaled_dot_product_attention(
            _split_heads(query, attn.heads),
            _split_heads(key, attn.heads),
            _split_heads(value, attn.heads),
            scale=attn.scale,
        )
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out.unflatten(1, (num_frames, -1)).flatten(0, 1)


def set_cross_frame_attention(unet: UNet2DConditionModel) -> None:
    """Route every attention module of a diffusers UNet through `CrossFrameAttnProcessor`."""
    # diffusers accepts any processor (custom ones are documented) but types the argument as a union of its own.
    unet.set_attn_processor(CrossFrameAttnProcessor())  # type: ignore[arg-type]


def always_forward_upsample_sizes(unet: UNet2DConditionModel) -> None:
    """Make every upsampler of a diffusers UNet take its skip connection's size, at every latent size.

    diffusers passes the skip connections' sizes to the upsamplers only when a latent side is not a multiple of
    `2**num_upsamplers` (so that odd sizes, e.g. 36×64 latents for 288×512, round-trip the down- and upsampling); that
    choice is Python control flow on the input's shape, which an exported graph cannot keep. Declaring more
    upsamplers than any latent side has factors of 2 makes diffusers always take the size-passing path. For sizes that
    are multiples, nearest interpolation to twice the size is exactly the scale-factor-2 path, so results do not
    change; the graph then serves every multiple of the VAE's scale.
    """
    unet.num_upsamplers = 62


class VideoUNet(nn.Module):
    """A Stable Diffusion UNet seen as a video model: `(videos, frames, C, h, w)` in and out.

    This is the exact module we export: the frame count is a dimension of `sample`, and text embeddings are per video.
    """

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        set_cross_frame_attention(unet)
        always_forward_upsample_sizes(unet)
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        num_frames = sample.shape[1]
        noise = self.unet(
            sample.flatten(0, 1),
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            cross_attention_kwargs={"num_frames": num_frames},
            return_dict=False,
        )[0]
        return noise.unflatten(0, (-1, num_frames))

    # The steps around the blocks, for fast mode's split (`t2v_fast.core.deepcache`): what diffusers'
    # `UNet2DConditionModel.forward` does before the down blocks, at the middle and after the up blocks, for a
    # Stable Diffusion UNet (no class or added embeddings).

    def embed(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, BlockContext]:
        unet = self.unet
        if unet.class_embedding is not None or unet.config.addition_embed_type or unet.config.center_input_sample:
            raise UserError("fast mode runs Stable Diffusion UNets without class or added embeddings")
        videos, frames = sample.shape[:2]
        images = sample.flatten(0, 1)
        temb = unet.time_embedding(unet.get_time_embed(sample=images, timestep=timestep), None)
        if unet.time_embed_act is not None:
            temb = unet.time_embed_act(temb)
        context = BlockContext(videos, frames, temb, encoder_hidden_states, {"num_frames": frames})
        return unet.conv_in(images), context

    def middle(self, hidden: torch.Tensor, context: BlockContext) -> torch.Tensor:
        return self.unet.mid_block(
            hidden, context.temb, encoder_hidden_states=context.text, cross_attention_kwargs=context.attention_kwargs
        )

    def finish(self, hidden: torch.Tensor, context: BlockContext) -> torch.Tensor:
        unet = self.unet
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden).unflatten(0, (context.videos, context.frames))
