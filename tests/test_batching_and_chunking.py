"""Batches equal one-by-one generation; chunked long videos equal diffusers' documented chunk-by-chunk procedure."""

import numpy as np
import pytest
import torch
from conftest import assert_is_moving_video, max_pixel_diff

from t2v_fast.core.chunks import plan_chunks
from t2v_fast.core.pipeline import expand_requests
from t2v_fast.errors import UserError

# Batched matmuls accumulate in a different order than single-video ones: observed 1/255, bound 2/255.
TOLERANCE = 2
SMALL = dict(frames=6, height=64, width=64, steps=8, progress=False)


def test_batch_of_prompts_equals_videos_one_by_one(pipeline):
    prompts = ["a cat", "a dog running on the beach", "sunset over the sea"]
    batch = pipeline.generate(prompts, videos_per_prompt=2, seed=100, negative_prompt="ugly", **SMALL)
    assert [v.metadata["seed"] for v in batch] == [100, 101, 102, 103, 104, 105]
    assert [v.metadata["prompt"] for v in batch] == [p for p in prompts for _ in range(2)]
    for k, video in enumerate(batch):
        alone = pipeline.generate_video(prompts[k // 2], seed=100 + k, negative_prompt="ugly", **SMALL)
        assert max_pixel_diff(video.frames, alone.frames) <= TOLERANCE, f"video {k}"
    assert max_pixel_diff(batch[0].frames, batch[1].frames) > 20, "videos of one prompt must differ"


def test_explicit_seed_list_and_negative_prompt_list(pipeline):
    videos = pipeline.generate(["a", "b"], seed=[5, 9], negative_prompt=["x", "y"], **SMALL)
    assert [(v.metadata["seed"], v.metadata["negative_prompt"]) for v in videos] == [(5, "x"), (9, "y")]
    with pytest.raises(UserError, match="2 seeds for 4 videos"):
        pipeline.generate(["a", "b"], seed=[5, 9], videos_per_prompt=2, **SMALL)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(prompt="  "), "missing prompt"),
        (dict(prompt=["a cat", ""]), "missing prompt"),
        (dict(prompt="a cat", negative_prompt=["x", 3]), "got 2 negative prompts for 1 prompts"),
        (dict(prompt=["a", "b"], negative_prompt=["x", 3]), "negative_prompt must be a string, got int"),
        (dict(prompt="a cat", seed=2**63), r"seed must be in \[0, 9223372036854775807\]"),
    ],
)
def test_bad_requests_are_user_errors(arguments, message):
    with pytest.raises(UserError, match=message):
        expand_requests(arguments["prompt"], arguments.get("negative_prompt"), arguments.get("seed", 0), 1)


def test_every_problem_of_a_call_is_named_at_once(pipeline):
    with pytest.raises(UserError) as raised:
        pipeline.generate_video("", frames=0, fps=-1)
    assert str(raised.value) == "missing prompt; frames must be >= 1, got 0; fps must be > 0, got -1"


def test_seed_rule():
    requests = expand_requests(["p", "q"], None, 10, videos_per_prompt=3)
    assert [(r.prompt, r.seed) for r in requests] == [("p", 10), ("p", 11), ("p", 12), ("q", 13), ("q", 14), ("q", 15)]


def test_plan_chunks_follows_documented_procedure():
    chunks = plan_chunks(24, 8)
    # The documented chunks' own frames, first after the anchor; the last chunk is filled up to 8 frames with frames
    # of the chunk before (dropped), so that static TensorRT engines serve every chunk.
    assert [c.frame_ids for c in chunks] == [
        [0, *range(0, 7)],
        [0, *range(7, 14)],
        [0, *range(14, 21)],
        [0, 21, 22, 23, 17, 18, 19, 20],
    ]
    assert [(c.keep_from, c.keep_count, c.output_start) for c in chunks] == [
        (1, 7, 0),
        (1, 7, 7),
        (1, 7, 14),
        (1, 3, 21),
    ]
    assert all(len(c.frame_ids) == 8 for c in chunks)
    assert plan_chunks(8, 8) == plan_chunks(8, None)
    assert plan_chunks(8, None)[0].frame_ids == list(range(8))


def test_chunked_video_equals_reference_chunk_by_chunk(pipeline, reference):
    """The procedure from diffusers' Text2Video-Zero docs: re-seed per chunk, frame_ids=[0]+chunk, drop frame 0."""
    seed, video_length, chunk_size, prompt = 3, 24, 8, "a panda is playing guitar on times square"
    settings = dict(height=64, width=64, num_inference_steps=10, t0=6, t1=8)
    chunk_ids = np.arange(0, video_length, chunk_size - 1)
    generator = torch.Generator()
    result = []
    for i, start in enumerate(chunk_ids):
        end = video_length if i == len(chunk_ids) - 1 else chunk_ids[i + 1]
        frame_ids = [0, *range(start, end)]
        generator.manual_seed(seed)
        output = reference(
            prompt=prompt, video_length=len(frame_ids), generator=generator, frame_ids=frame_ids, **settings
        )
        result.append(output.images[1:])
    expected = (np.concatenate(result) * 255).round().astype(np.uint8)

    ours = pipeline.generate_video(
        prompt, frames=24, chunk_size=8, seed=seed, height=64, width=64, steps=10, t0=6, t1=8, progress=False
    )
    assert ours.frames.shape == (24, 64, 64, 3)
    assert_is_moving_video(ours.frames)
    assert max_pixel_diff(ours.frames, expected) <= TOLERANCE
