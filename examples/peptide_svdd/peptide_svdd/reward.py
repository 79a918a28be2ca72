"""Rewards and evaluation scores on peptide strings (batched: a list of strings in, floats out)."""
from __future__ import annotations

from typing import Sequence

import torch

from svdd_lightning import Reward

from .data import AMINO_ACIDS, MarkovPeptides


class NetCharge(Reward):
    """Net charge at neutral pH: (K + R) - (D + E) per peptide, a non-differentiable reward.

    Args:
        histidine: charge counted for each H (about 0.1 at pH 7).
    """

    name = "net_charge"

    def __init__(self, histidine: float = 0.1) -> None:
        self.histidine = histidine

    def __call__(self, peptides: Sequence[str]) -> list[float]:
        return [float(p.count("K") + p.count("R") - p.count("D") - p.count("E") + self.histidine * p.count("H"))
                if set(p) <= set(AMINO_ACIDS) else None for p in peptides]


class MarkovLogLikelihood(Reward):
    """How natural a peptide is: its log-likelihood (nats) under the chain that generated the training data."""

    name = "data_log_likelihood"

    def __init__(self) -> None:
        self.chain = MarkovPeptides()

    def __call__(self, peptides: Sequence[str]) -> list[float]:
        index = {a: i for i, a in enumerate(AMINO_ACIDS)}
        tokens = torch.tensor([[index[a] for a in p] for p in peptides])
        return self.chain.log_likelihood(tokens).tolist()
