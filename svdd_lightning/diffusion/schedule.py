"""Noise schedules for masked (absorbing-state) diffusion."""
from __future__ import annotations

import torch

from ..checkpoints import Configurable


class LogLinearSchedule(Configurable):
    """MDLM's log-linear schedule: total noise sigma(t) = -log(1 - (1 - eps) t).

    A token is masked at time t with probability 1 - exp(-sigma(t)) = (1 - eps) t, and the
    continuous-time NELBO weight sigma'(t) / expm1(sigma(t)) equals 1 / t.
    """

    def __init__(self, eps: float = 1e-3) -> None:
        if not 0 < eps < 1:
            raise ValueError(f"LogLinearSchedule.eps must be in (0, 1), got {eps}")
        self.eps = eps

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.eps) * t

    def nelbo_weight(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 / t

    def sample_times(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Low-discrepancy (antithetic) times in [eps, 1], as MDLM trains with."""
        u = torch.rand((), generator=generator)
        t = (u + torch.arange(n) / n) % 1.0
        return (1 - self.eps) * t + self.eps
