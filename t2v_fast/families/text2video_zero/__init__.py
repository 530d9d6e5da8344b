"""Text2Video-Zero: a Stable Diffusion 1.x image UNet made temporal without training (latent motion, cross-frame
attention)."""
