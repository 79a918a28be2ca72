"""The two SDEs of score-based graph diffusion (GDSS, Jo et al. 2022) and their discretisation.

Each component of a graph (node features X, adjacency A) diffuses by its own SDE over t in [0, 1],
discretised into ``num_scales`` steps as in score SDE (Song et al. 2021) and GDSS:

- ``VESDE``: x_t = x_0 + sigma(t) z, sigma(t) = sigma_min (sigma_max / sigma_min)^t;
- ``VPSDE``: x_t = m(t) x_0 + s(t) z, m(t) = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2),
  s(t)^2 = 1 - m(t)^2.

Besides the marginals, each gives the reverse-diffusion predictor step, the Langevin corrector's
step-size factor, and Tweedie's posterior mean E[x_0 | x_t] from a score.
"""
from __future__ import annotations

import math

import torch

from ...checkpoints import Configurable


class SDE(Configurable):
    """Shared interface; ``t`` is a tensor of times (one per row) in [0, 1]."""

    num_scales: int

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean coefficient m(t), std s(t)) of q(x_t | x_0) = N(m(t) x_0, s(t)^2)."""
        raise NotImplementedError

    def prior_std(self) -> float:
        """Standard deviation of the prior at t = 1."""
        raise NotImplementedError

    def reverse_step(self, x: torch.Tensor, score: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse-diffusion predictor at discrete step t: (mean of x_{t - 1/N}, noise std)."""
        raise NotImplementedError

    def langevin_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """The corrector's step-size factor (alpha_i for VP, 1 for VE)."""
        return torch.ones_like(t)

    def discretised(self, num_scales: int) -> "SDE":
        """The same SDE on a grid of ``num_scales`` steps (the sampler's)."""
        if num_scales == self.num_scales:
            return self
        return type(self)(**{**self._init_args, "num_scales": num_scales})

    def _index(self, t: torch.Tensor) -> torch.Tensor:
        return (t * (self.num_scales - 1)).round().long()

    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        """A per-step table (``discrete_sigmas``, ...) on ``device``, copied there once."""
        cache = self.__dict__.setdefault("_tables", {})
        if (name, device) not in cache:
            cache[(name, device)] = getattr(self, name).to(device)
        return cache[(name, device)]

    def tweedie(self, x: torch.Tensor, score: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] = (x_t + s(t)^2 score) / m(t) (VE: m = 1; VP: s^2 = 1 - m^2)."""
        mean, std = (v.view(-1, *([1] * (x.dim() - 1))) for v in self.marginal(t))
        return (x + std**2 * score) / mean


class VESDE(SDE):
    """Variance-exploding SDE (GDSS's QM9 setting for X and A: sigma 0.1 -> 1.0, 1,000 steps)."""

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 1.0, num_scales: int = 1000) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.num_scales = sigma_min, sigma_max, num_scales
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), num_scales))

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(t), self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def prior_std(self) -> float:
        return self.sigma_max

    def reverse_step(self, x: torch.Tensor, score: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index(t)
        sigmas = self._table("discrete_sigmas", t.device)
        sigma = sigmas[i]
        previous = torch.where(i > 0, sigmas[(i - 1).clamp(min=0)], torch.zeros_like(sigma))
        var = (sigma**2 - previous**2).view(-1, *([1] * (x.dim() - 1)))
        return x + var * score, var.sqrt()


class VPSDE(SDE):
    """Variance-preserving SDE (GDSS's ZINC setting for X: beta 0.1 -> 1.0, 1,000 steps)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 1.0, num_scales: int = 1000) -> None:
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"VPSDE needs 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.num_scales = beta_min, beta_max, num_scales
        self.discrete_betas = torch.linspace(beta_min / num_scales, beta_max / num_scales, num_scales)
        self.alphas = 1.0 - self.discrete_betas

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_mean = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return log_mean.exp(), (1.0 - (2.0 * log_mean).exp()).sqrt()

    def prior_std(self) -> float:
        return 1.0

    def reverse_step(self, x: torch.Tensor, score: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index(t)
        beta = self._table("discrete_betas", t.device)[i].view(-1, *([1] * (x.dim() - 1)))
        drift = (1.0 - beta).sqrt() * x - x  # the discretised forward drift
        return x - (drift - beta * score), beta.sqrt()

    def langevin_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._table("alphas", t.device)[self._index(t)]
