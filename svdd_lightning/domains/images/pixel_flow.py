"""A rectified flow over pixels whose velocity network is a diffusers ``UNet2DModel``: the images domain's
flow-matching model (:class:`PixelFlow`), sampled by :class:`~svdd_lightning.diffusion.flow.RectifiedFlow`'s
chain.

States are image batches (B, C, H, W) in the UNet's pixel range; decoded samples are float32 CPU images
(C, H, W) in [0, 1], as the DDPM's (:mod:`.diffusers_model`), so the image rewards and outputs take both.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers import UNet2DModel
from torch import nn

from ...checkpoints import Configurable
from ...diffusion.flow import RectifiedFlow


class UNetVelocity(nn.Module):
    """A ``UNet2DModel`` as a velocity network v(x_t, t), called at timestep 1000 t."""

    def __init__(self, unet: UNet2DModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x.to(self.unet.dtype), t * 1000).sample.float()


class PixelFlow(Configurable, RectifiedFlow):
    """A rectified flow x_t = (1 - t) x_0 + t noise over images, velocity by a diffusers ``UNet2DModel``.

    Args:
        unet: the ``UNet2DModel`` config (unconditional).
        num_steps: steps of the time grid from 1 to 0.
        shift: SD3's shift of the grid (1: uniform).
        noise_level: the SDE's noise level a (0: the flow ODE, which SVDD with M > 1, SMC, nested IS and beam
            search refuse).
        image_range: the pixel range the UNet was trained on, mapped to [0, 1] by ``decode``.
    """

    def __init__(self, unet: dict[str, Any], num_steps: int = 50, shift: float = 1.0, noise_level: float = 0.7,
                 image_range: Sequence[float] = (-1.0, 1.0)) -> None:
        network = UNetVelocity(UNet2DModel.from_config(unet))
        config = network.unet.config
        if config.num_class_embeds is not None or config.class_embed_type is not None:
            raise ValueError("PixelFlow.unet: a class-conditional UNet is not supported; give an unconditional one")
        size = config.sample_size
        sample_shape = (config.in_channels, *((size, size) if isinstance(size, int) else size))
        super().__init__(network, sample_shape, num_steps, shift, noise_level)
        low, high = image_range
        self.image_range = (float(low), float(high))

    def images(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean states -> an image batch (B, C, H, W) in [0, 1] on the model's device (differentiable);
        image rewards read it directly (``score_states``)."""
        low, high = self.image_range
        return ((x0 - low) / (high - low)).clamp(0, 1)

    def decode(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """Images as float32 CPU tensors (C, H, W) in [0, 1]."""
        with torch.no_grad():
            return list(self.images(x0).cpu().float())

    def sample_files(self):
        """A decoding run writes this model's samples as PNGs and a grid per method."""
        from .outputs import ImageFiles

        return ImageFiles()
