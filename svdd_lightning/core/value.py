"""Soft value functions v(x_k, k): how good a partially denoised state is expected to end up."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .precision import as_float32, float32_scoring
from .run import Candidates
from .state import batch_size


class Value(ABC):
    """Scores candidates at one level; returns one float per row (on any device)."""

    @abstractmethod
    def __call__(self, candidates: Candidates) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> "Value":
        """Move the networks the value holds (``DecodingModule`` calls it for the run's device)."""
        return self

    def for_alpha(self, alpha: float) -> "Value":
        """This value for a decoder with temperature ``alpha`` (values that do not depend on alpha: itself)."""
        return self


class PosteriorMeanValue(Value):
    """SVDD-PM: v(x_k) = r(x0_hat(x_k)), no training (one denoiser call per candidate).

    ``x0_steps`` > 1 scores the x_0 reached by that many deterministic denoising steps instead
    (:meth:`DiffusionModel.x0_estimate`; x0_steps - 1 more denoiser calls per candidate): for models
    whose one-step posterior mean is a blur that decodes to no meaningful sample while the outcome is
    already being decided (GDSS on QM9, measured in docs/molecules.md).

    Args:
        x0_steps: deterministic denoising steps to the scored x_0 (1: Tweedie's one-step posterior mean).
    """

    def __init__(self, x0_steps: int = 1) -> None:
        if x0_steps < 1:
            raise ValueError(f"PosteriorMeanValue.x0_steps must be >= 1 (1 = Tweedie's posterior mean), got {x0_steps}")
        self.x0_steps = x0_steps

    def __call__(self, candidates: Candidates) -> torch.Tensor:
        if self.x0_steps == 1:
            return candidates.x0_hat_rewards()
        return candidates.run.score(candidates.x0_hat(self.x0_steps))


class NetworkValue(Value):
    """SVDD-MC: a value network f(x_k, t) regressed on r(x_0) (paper, Algorithm 2).

    ``network`` is an ``nn.Module`` called as ``network(x, t)`` with ``t`` the diffusion time of each
    row, or the path of a checkpoint directory saved with :func:`svdd_lightning.checkpoints.save`.

    Args:
        network: the value network, called as ``network(x, t)``, or the directory of a checkpoint saved by
            ``train.py fit``.
    """

    def __init__(self, network: str | nn.Module) -> None:
        if isinstance(network, str):
            from ..checkpoints import load

            network = load(network)
        self.network = network.eval().requires_grad_(False)

    def __call__(self, candidates: Candidates) -> torch.Tensor:
        """Values on the network's device, in float32 (autocast off: bf16 would tie nearby values)."""
        run = candidates.run
        t = candidates.time()
        device = next(self.network.parameters()).device
        with float32_scoring():
            out = run.evaluate_value(lambda rows: self.network(*tree_map(lambda v: as_float32(v.to(device)), rows)),
                                     (candidates.x, t), batch_size(candidates.x))
        return out.float().reshape(-1)

    def to(self, device: torch.device | str) -> "NetworkValue":
        self.network.to(device)
        return self
