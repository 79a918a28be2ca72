"""Rectified flows: the sampling chain of a velocity network, for any state tensor.

Interpolant x_t = (1 - t) x_0 + t eps (t = 1: noise, t = 0: clean), velocity v = E[eps - x_0 | x_t], so
x0_hat = E[x_0 | x_t] = x_t - t v. Noise level a = 0 steps the flow ODE by Euler, x_{t-d} = x_t - d v;
a > 0 steps the SDE with the ODE's marginals (Flow-GRPO),

    x_{t-d} = x_t - [v + s_t^2 / (2t) (x_t + (1 - t) v)] d + s_t sqrt(d) eps,   s_t = a sqrt(t / (1 - t)),

with the grid's first time below 1 standing in for t in 1 - t at t = 1. The step to t = 0 is x0_hat at any
a. a = sqrt(2) is the time reversal of the interpolant's own noising process (its x_0 given x_t is then the
interpolant's posterior), a = 0 the deterministic flow map.

The functions below are that math on tensors; :class:`RectifiedFlow` is the chain of a velocity network on
plain tensors, and the images domain's Stable Diffusion 3 and Flux step their latents with the same
functions.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..core.model import DiffusionModel


def flow_times(num_steps: int, shift: float = 1.0) -> Tensor:
    """The time grid (num_steps + 1,), float64, from 1 to 0: uniform times t shifted as SD3 does,
    shift t / (1 + (shift - 1) t) (shift 1: uniform; shift > 1: more steps near the noise)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0 (1: a uniform grid), got {shift}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def x0_from_velocity(x: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """x0_hat = x_t - t v."""
    return x - t * v


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The forward (noising) process: x_t = (1 - t) x_0 + t noise."""
    return (1 - t) * x0 + t * noise


def _one_minus(t: Tensor, first_time: Tensor) -> Tensor:
    """1 - t, with the grid's first time below 1 standing in for t at t = 1."""
    return 1 - (first_time if t == 1 else t)


def flow_step(x: Tensor, v: Tensor, t: Tensor, t_next: Tensor, noise_level: float,
              noise: Callable[[], Tensor] | None, first_time: Tensor) -> Tensor:
    """From time t to t_next < t: x0_hat when t_next = 0, else an Euler step of the ODE (``noise_level`` 0)
    or of the SDE with noise level a; ``noise()`` draws the SDE step's standard normal noise (only called
    then). ``first_time``: the grid's first time below 1, which stands in for t in 1 - t at t = 1."""
    if t_next == 0:
        return x0_from_velocity(x, v, t)
    dt = t - t_next
    if noise_level == 0:
        return x - dt * v
    std = noise_level * (t / _one_minus(t, first_time)).sqrt()
    drift = v + std ** 2 / (2 * t) * (x + (1 - t) * v)
    return x - drift * dt + std * dt.sqrt() * noise()


def even_subgrid(level: int, last: int, num_steps: int) -> list[int]:
    """``num_steps`` + 1 levels evenly spread from ``level`` to ``last`` (rounded)."""
    return torch.linspace(level, last, num_steps + 1).round().long().tolist()


def rollout(x: Tensor, v: Tensor, grid: Sequence[Any], velocity: Callable[[Tensor, Any], Tensor],
            step: Callable[[Tensor, Tensor, Any, Any], Tensor]) -> Tensor:
    """``step(x, v, grid[j], grid[j + 1])`` along the grid (levels or times); the first step uses ``v``, each
    further one ``velocity(x, grid[j])``."""
    for j in range(len(grid) - 1):
        if j:
            v = velocity(x, grid[j])
        x = step(x, v, grid[j], grid[j + 1])
    return x


def dps_velocity(v: Tensor, grad: Tensor, t: Tensor, scale: float, first_time: Tensor) -> Tensor:
    """DPS's velocity: the one whose score is the model's plus ``scale`` times ``grad`` (the guidance's
    gradient with respect to x_t), v - scale t / (1 - t) grad, since x0_hat = (x_t + t^2 score) / (1 - t) and
    x0_hat = x_t - t v (at t = 1 the grid's first time below 1 stands in for t in 1 - t)."""
    return v - scale * t / _one_minus(t, first_time) * grad


class RectifiedFlow(DiffusionModel):
    """The sampling chain of a rectified flow's velocity network on states (B, *sample_shape).

    Level k is time ``times[k]`` (:func:`flow_times`: level 0 is t = 1, pure noise; level ``num_steps`` is
    t = 0, clean). A step is :func:`flow_step`; x0_hat = x_t - t v. SVDD with M > 1 candidates, SMC, nested IS
    and beam search need ``noise_level`` > 0 (at 0 every candidate of a state is the same).

    Args:
        network: the velocity v(x_t, t), called as ``network(x, t)`` with x (B, *sample_shape) and t (B,) in
            [0, 1] (of x's dtype).
        sample_shape: the shape of one sample.
        num_steps: steps of the time grid from 1 to 0.
        shift: SD3's shift of the grid, t' = shift t / (1 + (shift - 1) t) (1: uniform).
        noise_level: the SDE's noise level a >= 0 (0: the flow ODE; sqrt(2): the reversal of the noising).
        dtype: of the prior noise, the step noise and so of the states.
    """

    def __init__(self, network: nn.Module, sample_shape: Sequence[int], num_steps: int = 50, shift: float = 1.0,
                 noise_level: float = 0.7, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if noise_level < 0:
            raise ValueError(f"RectifiedFlow.noise_level must be >= 0 (0: the flow ODE), got {noise_level}")
        self.register_buffer("times", flow_times(num_steps, shift), persistent=False)
        self.network, self.sample_shape, self.num_steps = network, tuple(sample_shape), num_steps
        self.noise_level, self.state_dtype = float(noise_level), dtype

    @property
    def stochastic_proposals(self) -> bool:
        """At noise level 0 a step is the flow ODE's: deterministic."""
        return self.noise_level > 0

    def time(self, level: int) -> float:
        return float(self.times[min(level, self.num_steps)])

    def velocity_at(self, x: Tensor, t: Tensor) -> Tensor:
        """The network's velocity at time ``t`` (a 0-d tensor) for every row."""
        return self.network(x, t.to(x.dtype).expand(x.shape[0]))

    def _noise(self, generators: Sequence[torch.Generator], per_row: int, device: torch.device) -> Tensor:
        """``per_row`` standard normal samples per generator, drawn on the CPU: rows b*per_row ..
        b*per_row + per_row - 1 from ``generators[b]``, in one draw."""
        return torch.cat([torch.randn((per_row, *self.sample_shape), generator=g, dtype=self.state_dtype)
                          for g in generators]).to(device)

    def _step(self, x: Tensor, v: Tensor, level: int, to: int, generators: Sequence[torch.Generator],
              per_row: int) -> Tensor:
        """:func:`flow_step` from level to level ``to``; ``per_row`` rows of ``x`` per generator."""
        return flow_step(x, v, self.times[level], self.times[to], self.noise_level,
                         lambda: self._noise(generators, per_row, x.device), self.times[1])

    def initial_state(self, generators: Sequence[torch.Generator], conditions: Tensor | None = None) -> Tensor:
        """Pure noise per generator (drawn on the CPU, then moved to the model's device)."""
        return self._noise(generators, 1, self.times.device)

    def denoise(self, x: Tensor, level: int) -> Tensor:
        """The velocity at the level's time."""
        return self.velocity_at(x, self.times[level])

    def x0_hat(self, x: Tensor, prediction: Tensor, level: int) -> Tensor:
        return x0_from_velocity(x, prediction, self.times[level])

    def propose(self, x: Tensor, prediction: Tensor, level: int, generators: Sequence[torch.Generator],
                num_candidates: int) -> Tensor:
        """One Euler (a = 0) or SDE (a > 0) step for all B*M candidates; candidate j of row b draws from
        ``generators[b]``; the step to t = 0 is x0_hat."""
        return self._step(x.repeat_interleave(num_candidates, 0), prediction.repeat_interleave(num_candidates, 0),
                          level, level + 1, generators, num_candidates)

    def x0_estimate(self, x: Tensor, prediction: Tensor, level: int, num_steps: int) -> Tensor:
        """The flow ODE from the level's time to 0 in ``num_steps`` equal Euler steps (the last is x0_hat)."""
        grid = list(torch.linspace(float(self.times[level]), 0.0, num_steps + 1, dtype=torch.float64))
        return rollout(x, prediction, grid, self.velocity_at,
                       lambda x, v, t, t_next: flow_step(x, v, t, t_next, 0.0, None, self.times[1]))

    def x0_samples(self, x: Tensor, prediction: Tensor, level: int, generators: Sequence[torch.Generator],
                   num_samples: int, num_steps: int) -> Tensor:
        """x_0 drawn by ``num_steps`` SDE steps on an even subgrid of the remaining levels (one step: x0_hat);
        sample j of row b draws from ``generators[b]``."""
        num_steps = min(num_steps, self.num_steps - level)
        return rollout(x.repeat_interleave(num_samples, 0), prediction.repeat_interleave(num_samples, 0),
                       even_subgrid(level, self.num_steps, num_steps), self.denoise,
                       lambda x, v, k, to: self._step(x, v, k, to, generators, num_samples))

    def forward_noise(self, x0: Tensor, level: int, generators: Sequence[torch.Generator]) -> Tensor:
        """x_t = (1 - t) x_0 + t noise at the level's time (the clean level is returned as it is)."""
        t = self.times[min(level, self.num_steps)]
        return x0 if t == 0 else interpolate(x0, self._noise(generators, 1, x0.device), t)

    def guided_prediction(self, x: Tensor, level: int, guidance: Callable[[Tensor], Tensor], scale: float) -> Tensor:
        """DPS through x0_hat (:func:`dps_velocity`), the gradient taken through the network."""
        x = x.detach().requires_grad_(True)
        v, t = self.denoise(x, level), self.times[level]
        (grad,) = torch.autograd.grad(guidance(x0_from_velocity(x, v, t)).sum(), x)
        return dps_velocity(v.detach(), grad, t, scale, self.times[1])

    def decode(self, x0: Tensor) -> list[Tensor]:
        """One CPU tensor (*sample_shape) per sample."""
        return list(x0.detach().cpu())
