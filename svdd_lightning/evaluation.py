"""Evaluation of decoded designs: per-sample metrics and the per-method summary of a run."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from . import checkpoints
from .core.model import DiffusionModel
from .core.reward import GuardedReward, Reward
from .core.state import State


class SampleMetric(ABC):
    """A per-sample evaluation column (an independent oracle, a likelihood under the model).

    ``threshold``, when set, adds to the summary the fraction of samples scoring above it.
    """

    threshold: float | None = None
    #: what the values measure, shown beside the column's name on plots
    unit: str | None = None

    @abstractmethod
    def __call__(self, model: DiffusionModel, x0: State, samples: list) -> torch.Tensor: ...


class ScoreMetric(SampleMetric):
    """A batched callable on decoded samples, e.g. an evaluation oracle; failures score NaN.

    Args:
        fn: the score, a batched callable on decoded samples (e.g. an independent evaluation oracle).
        threshold: also report the fraction of samples scoring above it (``fraction_above_<threshold>``).
    """

    def __init__(self, fn: Reward, threshold: float | None = None) -> None:
        self.reward = GuardedReward(fn, floor=float("nan"))  # the score, failures NaN
        self.unit = self.reward.unit
        self.threshold = threshold

    def __call__(self, model: DiffusionModel, x0: State, samples: list) -> torch.Tensor:
        return self.reward(samples)


class ELBOMetric(SampleMetric):
    """Approximate log-likelihood under the pretrained model: its Monte-Carlo ELBO, nats per sample.

    Args:
        num_times: Monte-Carlo diffusion times per sample.
        seed: seed of the Monte-Carlo draws of times and masks.
        model: a checkpoint directory to score under instead of the decoding model, e.g. the
            original pretrained model when decoding from a fine-tuned one.
    """

    def __init__(self, num_times: int = 16, seed: int = 0, model: str | None = None) -> None:
        self.num_times, self.seed = num_times, seed
        self.reference = None if model is None else checkpoints.load(model).requires_grad_(False)

    def __call__(self, model: DiffusionModel, x0: State, samples: list) -> torch.Tensor:
        if self.reference is not None:
            model = self.reference.to(next(model.parameters()).device)
        elbo = getattr(model, "elbo", None)
        if elbo is None:
            raise TypeError(f"ELBOMetric: {type(model).__name__} has no elbo(x0) method")
        device = next(model.parameters()).device
        return elbo(x0.to(device), num_times=self.num_times, seed=self.seed).float().cpu()


def quantile_summary(values: torch.Tensor) -> dict[str, float]:
    """mean, median, and the top-20% / top-10% thresholds (80th / 90th percentiles), NaNs ignored."""
    v = values[torch.isfinite(values)].double()
    if v.numel() == 0:
        return {"mean": float("nan"), "median": float("nan"), "top20": float("nan"), "top10": float("nan")}
    return {"mean": float(v.mean()), "median": float(v.quantile(0.5)), "top20": float(v.quantile(0.8)),
            "top10": float(v.quantile(0.9))}


def distinct_fraction(samples: list) -> float:
    return len({repr(s) for s in samples}) / max(len(samples), 1)
