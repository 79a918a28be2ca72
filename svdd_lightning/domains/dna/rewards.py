"""DNA rewards: a trained oracle network read from a safe checkpoint."""
from __future__ import annotations

import math

import torch

from ... import checkpoints
from ...core.reward import RewardFunction
from ...sequences import tokenize
from .data import ALPHABET


class OracleReward(RewardFunction):
    """Scores DNA strings with an oracle network saved by ``train.py fit`` (``ExportBest``).

    ``output="logit"`` returns the network's logit (the reward of the HepG2 task), ``"probability"``
    its sigmoid. Sequences with symbols outside ACGT score NaN (floored by :class:`Reward`).
    ``relaxed`` scores one-hot probabilities (N, L, 4) differentiably, for DPS.
    """

    def __init__(self, checkpoint: str, output: str = "logit", batch_size: int = 1024, name: str | None = None) -> None:
        if output not in ("logit", "probability"):
            raise ValueError(f"OracleReward.output must be 'logit' or 'probability', got {output!r}")
        self.network = checkpoints.load(checkpoint).requires_grad_(False)
        self.output, self.batch_size = output, batch_size
        self.name = name or f"oracle:{checkpoint.rstrip('/').split('/')[-1]}"

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.output == "logit" else torch.sigmoid(logits)

    def __call__(self, sequences: list[str]) -> list[float]:
        tokens = tokenize(sequences, ALPHABET)
        ok = (tokens >= 0).all(dim=1) & (tokens.shape[1] > 0)
        scores = torch.full((len(sequences),), math.nan)
        if ok.any():
            tokens = tokens[ok]
            device = next(self.network.parameters()).device
            with torch.no_grad():
                out = torch.cat([self.network(chunk.to(device)).float().cpu() for chunk in tokens.split(self.batch_size)])
            scores[ok] = self._transform(out)
        return scores.tolist()

    def to(self, device: torch.device | str) -> "OracleReward":
        """Move the oracle network (``DecodingModule`` does this for the run's device)."""
        self.network.to(device)
        return self

    def relaxed(self, probs: torch.Tensor) -> torch.Tensor:
        return self._transform(self.network(probs))
