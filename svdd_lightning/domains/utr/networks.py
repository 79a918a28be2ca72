"""The ConvGRU sequence network of the 5'UTR task: the MRL oracle and SVDD-MC's value network.

Convolutions read local motifs (start codons, Kozak context), a bidirectional GRU reads their order
and distance to the coding sequence. With ``input_symbols=5`` and ``time_conditioning`` the same
network reads partially masked sequences and their diffusion time: a value network v(x_t, t).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ...checkpoints import Configurable
from ...layers import time_features
from ...diffusion.tokens import one_hot


class ConvGRU(Configurable, nn.Module):
    """Conv1d stack -> bidirectional GRU -> [mean, last states] -> MLP -> one output per sequence.

    Takes token ids (N, L) over ``input_symbols`` symbols or a relaxed one-hot (N, L, input_symbols).
    """

    def __init__(self, channels: tuple[int, ...] = (64, 64), kernel_size: int = 7, hidden: int = 64,
                 dropout: float = 0.2, input_symbols: int = 4, time_conditioning: bool = False) -> None:
        super().__init__()
        self.input_symbols = input_symbols
        convs, c = [], input_symbols
        for c_out in channels:
            convs += [nn.Conv1d(c, c_out, kernel_size, padding=kernel_size // 2), nn.BatchNorm1d(c_out), nn.ReLU()]
            c = c_out
        self.convs = nn.Sequential(*convs)
        self.time_mlp = nn.Sequential(nn.Linear(c, c), nn.GELU(), nn.Linear(c, c)) if time_conditioning else None
        self.gru = nn.GRU(c, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * hidden, hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        h = self.convs(one_hot(x, self.input_symbols)).transpose(1, 2)  # (N, L, C)
        if self.time_mlp is not None:
            if t is None:
                raise ValueError("this network is time-conditioned: call it as network(x, t)")
            h = h + self.time_mlp(time_features(t.to(h.device), h.shape[2])).unsqueeze(1)
        # cuDNN's RNN backward only runs in training mode: gradients through the frozen (eval) network, as
        # DPS takes them, use the native GRU kernel
        native = torch.backends.cudnn.flags(enabled=False) if torch.is_grad_enabled() and not self.training else nullcontext()
        with native:
            states, last = self.gru(h)
        pooled = torch.cat([states.mean(dim=1), last.transpose(0, 1).flatten(1)], dim=1)
        return self.head(pooled).squeeze(-1)
