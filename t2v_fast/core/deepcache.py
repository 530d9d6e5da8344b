"""Fast mode (DeepCache, Ma et al., CVPR 2024): recompute the UNet's deep blocks every few steps, reuse them between.

A UNet's skip connections give it a shallow branch beside the deep one: the first down layers feed the last up
layers directly. DeepCache runs the whole UNet on "full" steps and keeps the deep branch's output (the hidden state
entering the up layer where the branch joins); on the steps between, only the shallow branch runs, taking that
feature in place of everything below it. The branch is numbered as DeepCache's `DeepCacheSDHelper` numbers it:
branch `b` joins at up level `b // 3` (0: the last, full-resolution up block), layer `b % 3` counted from that
block's end; branch 0 (only the last up layer and the layers before the first down block run) is the fastest.

The split is generic over diffusers' block layout (`resnets`, optional `temp_convs`, `attentions`,
`temp_attentions`, `downsamplers`/`upsamplers`), so it serves Text2Video-Zero's UNet2D and ModelScope's UNet3D; a
family's video UNet provides `embed` (time embedding and input convolution), `middle` and `finish`. Cross-frame
attention lives in the attention modules, so it works inside the shallow branch unchanged.

The cache is a local of one denoising loop (`VideoPipeline._denoise`): each phase of Text2Video-Zero (first frame to
t1, t1 to t0, all frames from t1) and each chunk starts with a full step, because a feature cached at another batch
shape (the first frame alone, another chunk) cannot be reused. `DeepCacheSDHelper` applied to diffusers'
`TextToVideoZeroPipeline` fails exactly there; the tests hold our fast mode to that helper with its state reset at
each phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from t2v_fast.core.params import branch_problems, raise_problems
from t2v_fast.errors import UserError

# DeepCacheSDHelper's numbering: three positions per UNet level (`branch // 3`, `branch % 3`).
POSITIONS_PER_LEVEL = 3
# The branch exported ONNX graphs and TensorRT engines are built for: DeepCache's default, the fastest. Its feature
# has the latents' resolution, so its graph's axes are those of the UNet (a deeper feature's halved sides are not an
# axis the exporters can derive from the latents').
EXPORTED_BRANCH = 0


@dataclass(frozen=True)
class DeepCache:
    """Fast mode's schedule: a full UNet step every `interval` steps of a loop (its first included), the shallow
    branch `branch` on the others."""

    interval: int
    branch: int

    def is_full_step(self, step: int) -> bool:
        return step % self.interval == 0


def branch_count(levels: int) -> int:
    """How many branches a UNet with this many levels (blocks down, and up) has: DeepCacheSDHelper's three each."""
    return POSITIONS_PER_LEVEL * levels


class VideoUNetParts(Protocol):
    """What a family's video UNet gives the split: its diffusers UNet and the steps around the blocks."""

    unet: Any

    def embed(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, BlockContext]:
        """`(videos, frames, C, h, w)` latents -> the first hidden state (the first skip connection) and the context
        every block call takes."""

    def middle(self, hidden: torch.Tensor, context: BlockContext) -> torch.Tensor: ...

    def finish(self, hidden: torch.Tensor, context: BlockContext) -> torch.Tensor:
        """The last hidden state -> noise `(videos, frames, C, h, w)`."""


@dataclass(frozen=True)
class BlockContext:
    """What every block layer takes besides its hidden state."""

    videos: int
    frames: int
    temb: torch.Tensor  # per image (videos·frames)
    text: torch.Tensor  # as the family's attention processors expect it
    attention_kwargs: dict[str, Any] | None  # cross_attention_kwargs of the spatial attentions


@dataclass(frozen=True)
class Cut:
    """Where a branch joins the up path: the first layer of `up_block` that the shallow branch runs, and how many
    skip connections (counted from the first) it needs."""

    up_block: int
    layer: int
    skips: int

    @classmethod
    def of(cls, unet: Any, branch: int) -> Cut:
        levels = len(unet.up_blocks)
        raise_problems(branch_problems(branch, branch_count(levels)))
        level, position = divmod(branch, POSITIONS_PER_LEVEL)
        block = levels - 1 - level
        layers = len(unet.up_blocks[block].resnets)
        # A position past the block's first layer (a UNet with fewer layers per block) is the block's input.
        first = max(layers - 1 - position, 0)
        later = sum(len(b.resnets) for b in unet.up_blocks[block + 1 :])
        return cls(block, first, layers - first + later)


def feature_channels(block_channels: tuple[int, ...], layers_per_block: int, branch: int) -> int:
    """Channels of the feature a branch caches, from the UNet's `block_out_channels` and `layers_per_block`: an up
    block's own width inside it, the width of the level below at its input (the mid block's at the deepest)."""
    level, position = divmod(branch, POSITIONS_PER_LEVEL)
    at_input = position >= layers_per_block  # the up block has layers_per_block + 1 layers
    return block_channels[min(level + 1, len(block_channels) - 1)] if at_input else block_channels[level]


def _layer(block: nn.Module, index: int, hidden: torch.Tensor, context: BlockContext) -> torch.Tensor:
    """Layer `index` of a diffusers down or up block (its resnet, then temporal convolution, spatial and temporal
    attention where the block has them), as the block's own `forward` runs it."""
    parts = cast(Any, block)
    hidden = parts.resnets[index](hidden, context.temb)
    if getattr(parts, "temp_convs", None) is not None:
        hidden = parts.temp_convs[index](hidden, num_frames=context.frames)
    if getattr(parts, "attentions", None):
        hidden = parts.attentions[index](
            hidden,
            encoder_hidden_states=context.text,
            cross_attention_kwargs=context.attention_kwargs,
            return_dict=False,
        )[0]
    if getattr(parts, "temp_attentions", None) is not None:
        hidden = parts.temp_attentions[index](hidden, num_frames=context.frames, return_dict=False)[0]
    return hidden


def _down(
    unet: Any, hidden: torch.Tensor, context: BlockContext, stop_at: int | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The down path's skip connections (the first hidden state included), all or the first `stop_at`."""
    skips = [hidden]
    for block in unet.down_blocks:
        for index in range(len(block.resnets)):
            if stop_at is not None and len(skips) >= stop_at:
                return hidden, skips
            hidden = _layer(block, index, hidden, context)
            skips.append(hidden)
        for downsampler in block.downsamplers or ():
            if stop_at is not None and len(skips) >= stop_at:
                return hidden, skips
            hidden = downsampler(hidden)
            skips.append(hidden)
    return hidden, skips


def _up(
    block: nn.Module,
    hidden: torch.Tensor,
    skips: list[torch.Tensor],
    context: BlockContext,
    layers: range | None = None,
    upsample: bool = True,
) -> torch.Tensor:
    """An up block's `layers` (default: all), each taking the last remaining skip connection (popped), then its
    upsampler (to the size of the next skip connection, as our UNets always pass it)."""
    parts = cast(Any, block)
    if getattr(parts, "s1", None):
        raise UserError("fast mode does not combine with FreeU")
    for index in layers if layers is not None else range(len(parts.resnets)):
        hidden = _layer(block, index, torch.cat([hidden, skips.pop()], dim=1), context)
    for upsampler in (parts.upsamplers or ()) if upsample else ():
        hidden = upsampler(hidden, skips[-1].shape[2:] if skips else None)
    return hidden


def run_caching(
    video_unet: VideoUNetParts,
    cut: Cut,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A full step: the noise, and the feature entering layer `cut.layer` of up block `cut.up_block`."""
    hidden, context = video_unet.embed(sample, timestep, encoder_hidden_states)
    hidden, skips = _down(video_unet.unet, hidden, context)
    hidden = video_unet.middle(hidden, context)
    up_blocks = video_unet.unet.up_blocks
    for block in up_blocks[: cut.up_block]:
        hidden = _up(block, hidden, skips, context)
    block = up_blocks[cut.up_block]
    feature = _up(block, hidden, skips, context, range(cut.layer), upsample=False)
    hidden = _up(block, feature, skips, context, range(cut.layer, len(block.resnets)))
    for block in up_blocks[cut.up_block + 1 :]:
        hidden = _up(block, hidden, skips, context)
    return video_unet.finish(hidden, context), feature.unflatten(0, (context.videos, context.frames))


def run_cached(
    video_unet: VideoUNetParts,
    cut: Cut,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    feature: torch.Tensor,
) -> torch.Tensor:
    """A cached step: only the shallow branch runs, the deep branch's output read from `feature`."""
    hidden, context = video_unet.embed(sample, timestep, encoder_hidden_states)
    _, skips = _down(video_unet.unet, hidden, context, stop_at=cut.skips)
    up_blocks = video_unet.unet.up_blocks
    block = up_blocks[cut.up_block]
    hidden = _up(block, feature.flatten(0, 1), skips, context, range(cut.layer, len(block.resnets)))
    for block in up_blocks[cut.up_block + 1 :]:
        hidden = _up(block, hidden, skips, context)
    return video_unet.finish(hidden, context)


class _SplitUNet(nn.Module):
    """A video UNet and where a branch cuts it: what both of fast mode's modules hold."""

    def __init__(self, video_unet: nn.Module, branch: int):
        super().__init__()
        self.video_unet = video_unet
        self.cut = Cut.of(self.parts.unet, branch)

    @property
    def parts(self) -> VideoUNetParts:
        return cast(VideoUNetParts, self.video_unet)


class CachingUNet(_SplitUNet):
    """A video UNet's full step that also returns the feature its branch caches: the exported `unet_caching`."""

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return run_caching(self.parts, self.cut, sample, timestep, encoder_hidden_states)


class CachedUNet(_SplitUNet):
    """A video UNet's shallow branch from a cached feature: the exported `unet_cached`."""

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, feature: torch.Tensor
    ) -> torch.Tensor:
        return run_cached(self.parts, self.cut, sample, timestep, encoder_hidden_states, feature)
