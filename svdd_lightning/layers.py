"""Small building blocks shared by the domains' networks."""
from __future__ import annotations

import math

import torch


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of diffusion times t in [0, 1], (N,) -> (N, dim)."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = 1000.0 * t.float().unsqueeze(1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)
