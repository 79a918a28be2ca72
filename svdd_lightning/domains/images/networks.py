"""Image networks saved as safe checkpoints: the MNIST digit classifier behind ``ClassifierLogProb``, and
the CNN value network / reward proxy on (x_t, t)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ...checkpoints import Configurable
from ...layers import time_features


class MNISTClassifier(Configurable, nn.Module):
    """A small CNN: [conv 3x3 -> ReLU -> max-pool 2] per channel width but the last (no pool),
    global average pooling, dropout, linear -> ``num_classes`` logits.

    Input: images (B, ``in_channels``, H, W) in [0, 1] (MNIST padded to 32 x 32, as diffusion models
    take it); any H, W of at least 2 ** (len(channels) - 1) work.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128), num_classes: int = 10, in_channels: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c, c_out, 3, padding=1), nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images in [0, 1]."""
        return self.head(self.features(images * 2 - 1))


class _TimeConvBlock(nn.Module):
    """conv 3x3 -> GroupNorm -> + time shift -> SiLU, twice, with a residual connection."""

    def __init__(self, c_in: int, c_out: int, hidden: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(min(8, c_out), c_out), nn.GroupNorm(min(8, c_out), c_out)
        self.time = nn.Linear(hidden, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.norm1(self.conv1(x)) + self.time(time)[:, :, None, None])
        return self.skip(x) + nn.functional.silu(self.norm2(self.conv2(h)))


class ImageValueCNN(Configurable, nn.Module):
    """A CNN f(x_t, t) -> (B,): SVDD-MC's value network on noisy images or latents, or (with t = 0, the
    default) a differentiable reward proxy on clean images for DPS.

    Residual conv blocks (GroupNorm, SiLU) with a sinusoidal time embedding added to every block,
    down-sampled by 2 between widths, global average pooling and an MLP head.

    Args:
        in_channels: channels of the input (1 for MNIST, 4 for Stable Diffusion latents).
        channels: width of each resolution.
        time_dim: sinusoidal features of t.
        state_key: the entry of a dict state the network reads (``"sample"``; ``"latents"`` for SD);
            a plain tensor input is read as it is.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128), time_dim: int = 64,
                 state_key: str = "sample") -> None:
        super().__init__()
        hidden = 4 * channels[0]
        self.time_dim, self.state_key = time_dim, state_key
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        widths = [channels[0], *channels]
        self.blocks = nn.ModuleList(_TimeConvBlock(a, b, hidden) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Sequential(nn.Linear(channels[-1], hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: dict[str, torch.Tensor] | torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        x = x[self.state_key] if isinstance(x, dict) else x
        t = torch.zeros(len(x), device=x.device) if t is None else t.to(x.device)
        time = self.time_mlp(time_features(t, self.time_dim))
        h = self.stem(x.float())
        for i, block in enumerate(self.blocks):
            if i:
                h = nn.functional.avg_pool2d(h, 2)
            h = block(h, time)
        return self.head(h.mean(dim=(2, 3))).squeeze(-1)
