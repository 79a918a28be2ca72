"""Soft value functions v(x_k, k): how good a partially denoised state is expected to end up."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from .run import Candidates
from .state import batch_size, map_chunked


class Value(ABC):
    """Scores candidates at one level; returns one float per row."""

    @abstractmethod
    def __call__(self, candidates: Candidates) -> torch.Tensor: ...


class PosteriorMeanValue(Value):
    """SVDD-PM: v(x_k) = r(x0_hat(x_k)), no training (one denoiser call per candidate)."""

    def __call__(self, candidates: Candidates) -> torch.Tensor:
        return candidates.run.score(candidates.x0_hat())


class NetworkValue(Value):
    """SVDD-MC: a value network f(x_k, t) regressed on r(x_0) (paper, Algorithm 2).

    ``network`` is an ``nn.Module`` called as ``network(x, t)`` with ``t`` the diffusion time of each
    row, or the path of a checkpoint directory saved with :func:`svdd_lightning.checkpoints.save`.
    """

    def __init__(self, network: nn.Module | str) -> None:
        if isinstance(network, str):
            from ..checkpoints import load

            network = load(network)
        self.network = network.eval().requires_grad_(False)

    def __call__(self, candidates: Candidates) -> torch.Tensor:
        run = candidates.run
        t = candidates.time()
        run.stats.value_calls += batch_size(candidates.x)
        device = next(self.network.parameters()).device
        out = map_chunked(lambda rows: self.network(rows[0].to(device), rows[1].to(device)), (candidates.x, t),
                          run.chunk_size)
        return out.float().reshape(-1).cpu()
