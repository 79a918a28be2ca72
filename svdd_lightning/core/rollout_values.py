"""Soft values estimated from draws of the pretrained model: the posterior-sampling value and lookahead.

SVDD's target is p(x) proportional to exp(r(x) / alpha) p_pre(x); its exact soft value is
v_k(x) = alpha log E_pre[exp(r(x_0) / alpha) | x_k = x]. :class:`PosteriorSamplingValue` estimates it
from K draws of x_0 ~ p(x_0 | x_k); exp(v / alpha) is then an unbiased estimate of exp(v_k / alpha) when
the draws are exact, so SVDD's selection (softmax(v / alpha) over M candidates) tends to the optimal
policy as M grows, for any K. r(x0_hat) (:class:`~svdd_lightning.PosteriorMeanValue`) does not depend
on alpha and has no such limit.
"""
from __future__ import annotations

import copy
import math

import torch

from .steps import advance, soft_value
from .run import Candidates
from .value import Value


class PosteriorSamplingValue(Value):
    """v(x_k) = alpha log (1/K) sum_j exp(r(x0_j) / alpha), x0_j ~ p(x_0 | x_k), j = 1 .. K; alpha = 0: max_j r(x0_j).

    Args:
        num_samples: K, the draws per candidate (K reward calls per candidate, fewer when draws coincide).
        alpha: the temperature; ``None`` (default) takes the decoder's (SVDD's, SMC's; 0 for beam search).
        x0_steps: stochastic denoising steps per draw (:meth:`DiffusionModel.x0_samples`), capped at the
            levels left; each step after the first is one denoiser call per draw. Masked models: 1 draws
            every masked token from the denoiser output already computed (no denoiser call; the tokens are
            drawn independently, so the draws only approximate p_pre(x_0 | x_k) while two or more are
            masked); ``x0_steps`` >= the levels left draws exactly from p_pre(x_0 | x_k). Continuous models
            (GDSS, diffusers) need >= 2: short ancestral rollouts on a coarse grid.
    """

    def __init__(self, num_samples: int = 4, alpha: float | None = None, x0_steps: int = 1) -> None:
        if num_samples < 1:
            raise ValueError(f"PosteriorSamplingValue.num_samples must be >= 1, got {num_samples}")
        if alpha is not None and alpha < 0:
            raise ValueError(f"PosteriorSamplingValue.alpha must be >= 0 (0 = max over the draws), got {alpha}")
        if x0_steps < 1:
            raise ValueError(f"PosteriorSamplingValue.x0_steps must be >= 1, got {x0_steps}")
        self.num_samples, self.alpha, self.x0_steps = num_samples, alpha, x0_steps

    def for_alpha(self, alpha: float) -> "PosteriorSamplingValue":
        if self.alpha is not None:
            return self
        bound = copy.copy(self)
        bound.alpha = alpha
        return bound

    def __call__(self, candidates: Candidates) -> torch.Tensor:
        k, alpha, model = self.num_samples, self.alpha or 0.0, candidates.run.model
        if self.x0_steps == 1 and not model.random_one_step_x0:
            raise ValueError(f"PosteriorSamplingValue.x0_steps: {type(model).__name__} draws x_0 by stochastic "
                             f"rollouts (one step is its deterministic x0_hat); set x0_steps >= 2")
        rewards = candidates.run.score(candidates.x0_samples(k, self.x0_steps)).double().view(-1, k)
        if alpha == 0:
            return rewards.max(dim=1).values
        return alpha * (torch.logsumexp(rewards / alpha, dim=1) - math.log(k))


class LookaheadValue(Value):
    """v(x_k) = value(x_{k+L}): each candidate runs L pretrained steps (one denoiser call per row and step,
    drawn with its sample's generator) and is scored there by ``value`` (by the reward once clean). The
    candidate itself is what the decoder keeps; the look-ahead states are discarded."""

    def __init__(self, value: Value, steps: int = 1) -> None:
        if steps < 0:
            raise ValueError(f"LookaheadValue.steps must be >= 0, got {steps}")
        self.value, self.steps = value, steps

    def to(self, device: torch.device | str) -> "LookaheadValue":
        self.value.to(device)
        return self

    def for_alpha(self, alpha: float) -> "LookaheadValue":
        return LookaheadValue(self.value.for_alpha(alpha), self.steps)

    def __call__(self, candidates: Candidates) -> torch.Tensor:
        if candidates.generators is None:
            raise ValueError("LookaheadValue needs candidates that carry their samples' generators")
        stop = min(candidates.level + self.steps, candidates.run.model.num_steps)
        return soft_value(self.value, advance(candidates.run, candidates, stop, candidates.generators))
