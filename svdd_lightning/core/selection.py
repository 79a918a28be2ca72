"""Selection rules: which candidate survives (SVDD) and which particles are copied (SMC)."""
from __future__ import annotations

from typing import Sequence

import torch


def select_candidates(values: torch.Tensor, alpha: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Index of the kept candidate for each row of ``values`` (B, M).

    alpha = 0 keeps the argmax; alpha > 0 samples from softmax(values / alpha) with row b's generator.
    The result is on the values' device. The random draw is made on the CPU (the generators are CPU
    generators, whatever device the values come from), so a sample is the same on every device.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return values.argmax(dim=1)
    probs = torch.softmax(values.detach().double().cpu() / alpha, dim=1)
    chosen = torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators)])
    return chosen.to(values.device)


def effective_sample_size(log_weights: torch.Tensor) -> float:
    w = torch.softmax(log_weights.detach().double().cpu(), dim=0)
    return float(1.0 / (w * w).sum())


def resample(log_weights: torch.Tensor, generator: torch.Generator, scheme: str = "multinomial") -> torch.Tensor:
    """Ancestor indices (on the CPU, drawn with the CPU ``generator``) for a population with unnormalised
    ``log_weights`` (N,) on any device."""
    n = log_weights.shape[0]
    w = torch.softmax(log_weights.detach().double().cpu(), dim=0)
    if scheme == "multinomial":
        return torch.multinomial(w, n, replacement=True, generator=generator)
    if scheme == "systematic":
        u = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
        return torch.searchsorted(torch.cumsum(w, 0), u).clamp_(max=n - 1)
    raise ValueError(f"resampling scheme must be 'multinomial' or 'systematic', got {scheme!r}")
