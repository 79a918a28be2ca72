"""Sequence-to-activity networks for DNA: the Enformer-style reward oracle and a CNN evaluation oracle.

Both take token ids (N, L) over ACGT or a relaxed one-hot (N, L, 4) (probabilities, for gradient
guidance) and return one logit per sequence. With ``input_symbols=5`` and ``time_conditioning`` the
Enformer-style network reads partially masked sequences and their diffusion time: a value network
v(x_t, t) for SVDD-MC.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoints import Configurable
from ...layers import time_features
from ...diffusion.tokens import one_hot


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(c_in)
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(self.norm(h)))


class EnformerStyleClassifier(Configurable, nn.Module):
    """Convolution stem and tower, transformer layers, pooled linear head.

    A scaled-down Enformer (Avsec et al. 2021) sized for speed, since SVDD-PM calls the reward on
    every candidate: a wide stem convolution max-pooled by ``stem_pool`` (Enformer's attention
    pooling cost more than all convolutions together on CPU), a tower of conv blocks each halving
    the length, ``num_transformer_layers`` self-attention layers with learned positions, and
    a head on the mean-pooled sequence.
    """

    def __init__(self, seq_len: int = 200, stem_channels: int = 32, stem_pool: int = 4,
                 tower_channels: tuple[int, ...] = (64, 64), num_transformer_layers: int = 2, num_heads: int = 4,
                 dropout: float = 0.1, input_symbols: int = 4, time_conditioning: bool = False) -> None:
        super().__init__()
        self.input_symbols = input_symbols
        self.stem = nn.Conv1d(input_symbols, stem_channels, 15, padding=7)
        self.stem_pool = nn.MaxPool1d(stem_pool)
        tower, c = [], stem_channels
        for c_out in tower_channels:
            tower += [ConvBlock(c, c_out, 5), nn.MaxPool1d(2)]
            c = c_out
        self.tower = nn.Sequential(*tower)
        length = seq_len // (stem_pool * 2 ** len(tower_channels))
        self.positions = nn.Parameter(torch.randn(1, length, c) * 0.02)
        layer = nn.TransformerEncoderLayer(c, num_heads, 2 * c, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_transformer_layers, enable_nested_tensor=False)
        self.time_mlp = nn.Sequential(nn.Linear(c, c), nn.GELU(), nn.Linear(c, c)) if time_conditioning else None
        self.head = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU(), nn.Dropout(dropout), nn.Linear(c, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        h = self.stem_pool(F.relu(self.stem(one_hot(x, self.input_symbols))))
        h = self.tower(h).transpose(1, 2)
        if self.time_mlp is not None:
            if t is None:
                raise ValueError("this network is time-conditioned: call it as network(x, t)")
            h = h + self.time_mlp(time_features(t.to(h.device), h.shape[2])).unsqueeze(1)
        h = self.transformer(h + self.positions[:, : h.shape[1]])
        return self.head(h.mean(dim=1)).squeeze(-1)


class ConvClassifier(Configurable, nn.Module):
    """A Basset-style CNN (wide first filters, max pooling, global max over positions, MLP head)."""

    def __init__(self, channels: tuple[int, ...] = (128, 128, 128), kernel_sizes: tuple[int, ...] = (19, 9, 5),
                 hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        if len(channels) != len(kernel_sizes):
            raise ValueError("ConvClassifier: channels and kernel_sizes must have the same length")
        layers, c = [], 4
        for c_out, k in zip(channels, kernel_sizes):
            layers += [nn.Conv1d(c, c_out, k, padding=k // 2), nn.BatchNorm1d(c_out), nn.ReLU(), nn.MaxPool1d(2)]
            c = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(one_hot(x))
        return self.head(h.amax(dim=2)).squeeze(-1)
