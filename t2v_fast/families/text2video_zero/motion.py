"""Motion dynamics in latent space: a global translation per frame, then DDPM re-noising from t0 to t1."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The reference builds its flow field on a 512×512 grid whatever the resolution, so a motion strength `s` moves a frame
# by s/512 of its width (or height) per frame id. We keep that convention so that settings carry over unchanged.
REFERENCE_GRID = 512


def translation_grid(
    frame_ids: Sequence[int], motion_x: float, motion_y: float, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """Sampling grid `(frames, h, w, 2)` for `grid_sample` that shifts frame `k` by `(motion_x, motion_y)·id_k`.

    This is the reference's flow field (pixel coordinates plus flow on the 512 grid, normalised, bilinearly resized to
    the latent size) in closed form: the resize of a linear ramp is linear, so latent column `j` samples column
    `j + (motion·id − 0.5)·w/512`, and no 512×512 field is built per frame. Where that shift is exactly half a
    latent pixel (a nearest-neighbour tie), float rounding may pick the other neighbour than the reference does.
    """
    ids = torch.tensor(list(frame_ids), dtype=torch.float32, device=device)[:, None]

    def axis(size: int, motion: float) -> torch.Tensor:
        pixels = torch.arange(size, dtype=torch.float32, device=device) + (motion * ids - 0.5) * size / REFERENCE_GRID
        return (2 * pixels + 1) / size - 1  # pixel -> normalised coordinate, align_corners=False

    grid_x = axis(width, motion_x)[:, None, :].expand(-1, height, -1)
    grid_y = axis(height, motion_y)[:, :, None].expand(-1, -1, width)
    return torch.stack([grid_x, grid_y], dim=-1)


def warp_latents(latents: torch.Tensor, frame_ids: Sequence[int], motion_x: float, motion_y: float) -> torch.Tensor:
    """Translate `latents` `(videos, C, h, w)` into `(videos, len(frame_ids), C, h, w)`, one shift per frame id."""
    videos, _channels, height, width = latents.shape
    grid = translation_grid(frame_ids, motion_x, motion_y, height, width, latents.device)
    frames = len(frame_ids)
    source = latents[:, None].expand(-1, frames, -1, -1, -1).flatten(0, 1)
    warped = F.grid_sample(
        source.float(), grid.repeat(videos, 1, 1, 1), mode="nearest", padding_mode="reflection", align_corners=False
    )
    return warped.to(latents.dtype).unflatten(0, (videos, frames))


def forward_diffuse(
    latents: torch.Tensor, noise: torch.Tensor, alphas: torch.Tensor, t_from: int, t_to: int
) -> torch.Tensor:
    """DDPM forward process from timestep `t_from` to the noisier `t_to` in one jump: the product of alphas between."""
    alpha = torch.prod(alphas[t_from:t_to]).to(latents.device)
    return (alpha.sqrt() * latents + (1 - alpha).sqrt() * noise).to(latents.dtype)
