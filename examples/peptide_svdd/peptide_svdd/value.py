"""A value network for SVDD-MC: f(x_t, t) regressed on the reward of the rollout's end."""
from __future__ import annotations

import torch
from safetensors.torch import load_file
from torch import nn

from svdd_lightning import Configurable

from .model import MASK


class PeptideValueNet(Configurable, nn.Module):
    """Partially masked peptide (B, L) and diffusion time (B,) -> predicted reward (B,).

    Args:
        seq_len: peptide length L.
        width: embedding width per position.
        hidden: hidden units of the MLP.
        weights: a ``model.safetensors`` of this network to load (as written by ``train.py fit``).
    """

    def __init__(self, seq_len: int = 12, width: int = 16, hidden: int = 128, weights: str | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(MASK + 1, width)
        self.position = nn.Parameter(torch.zeros(seq_len, width))
        self.mlp = nn.Sequential(nn.Linear(seq_len * width + 1, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1))
        if weights is not None:
            self.load_state_dict(load_file(weights))

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = (self.embed(tokens) + self.position).flatten(1)
        return self.mlp(torch.cat([h, t.to(h).unsqueeze(1)], dim=1)).squeeze(1)
