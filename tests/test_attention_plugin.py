"""Cross-frame attention against diffusers' CrossFrameAttnProcessor2_0, module by module and through a whole UNet."""

import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
    CrossFrameAttnProcessor2_0,
)

from t2v_fast.attention_plugin import CrossFrameAttnProcessor, VideoUNet

TOLERANCE = 1e-5
SHAPES = [(1, 1), (1, 8), (2, 8), (6, 3), (4, 5), (3, 16)]  # (videos × guidance, frames)


@pytest.mark.parametrize(("videos", "frames"), SHAPES)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "text-cross"])
def test_processor_matches_diffusers(videos, frames, cross):
    torch.manual_seed(videos * 100 + frames)
    attn = Attention(query_dim=64, heads=4, dim_head=16, cross_attention_dim=48 if cross else None).eval()
    hidden = torch.randn(videos * frames, 20, 64)
    text = torch.randn(videos, 7, 48) if cross else None
    expected = CrossFrameAttnProcessor2_0(batch_size=videos)(
        attn, hidden, text.repeat_interleave(frames, 0) if cross else None
    )
    actual = CrossFrameAttnProcessor()(attn, hidden, text, num_frames=frames)
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)


def test_first_frame_is_the_only_key_source():
    """Changing any frame but the first must not change the first frame's output; changing the first changes all."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    hidden = torch.randn(2 * 4, 10, 32)
    base = CrossFrameAttnProcessor()(attn, hidden, num_frames=4)
    later = hidden.clone()
    later[2] += 1.0  # video 0, frame 2
    out = CrossFrameAttnProcessor()(attn, later, num_frames=4)
    torch.testing.assert_close(out[[0, 1, 3, 4, 5, 6, 7]], base[[0, 1, 3, 4, 5, 6, 7]])
    first = hidden.clone()
    first[4] += 1.0  # video 1, frame 0
    out = CrossFrameAttnProcessor()(attn, first, num_frames=4)
    assert all((out[i] - base[i]).abs().max() > 1e-3 for i in range(4, 8))
    torch.testing.assert_close(out[:4], base[:4])


@pytest.mark.parametrize(("videos", "frames"), [(2, 8), (4, 3)])
def test_video_unet_matches_diffusers_unet(pipeline, videos, frames):
    """The whole UNet: our per-video layout against the reference's per-frame layout and processor."""
    import copy

    unet = copy.deepcopy(pipeline.backend.unet.unet)
    ours = VideoUNet(copy.deepcopy(unet)).eval()
    unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=videos))
    torch.manual_seed(1)
    sample = torch.randn(videos, frames, 4, 8, 8)
    text = torch.randn(videos, 77, unet.config.cross_attention_dim)
    t = torch.tensor(801)
    with torch.no_grad():
        expected = unet(sample.flatten(0, 1), t, encoder_hidden_states=text.repeat_interleave(frames, 0)).sample
        actual = ours(sample, t, text)
    torch.testing.assert_close(actual.flatten(0, 1), expected, atol=TOLERANCE, rtol=0)
