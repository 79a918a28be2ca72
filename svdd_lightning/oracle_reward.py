"""A trained sequence oracle network, read from a safe checkpoint, as a batched reward."""
from __future__ import annotations

import math

import torch

from . import checkpoints
from .core.reward import RewardFunction
from .sequences import tokenize


class OracleReward(RewardFunction):
    """Scores sequence strings with an oracle network saved by ``train.py fit`` (``ExportBest``).

    ``output="raw"`` returns the network's output (a classifier's logit, e.g. the HepG2 reward, or a
    regressor's prediction, e.g. mean ribosome load); ``"sigmoid"`` its sigmoid (a classifier's
    probability). ``alphabet`` is the token order the network was trained on; T and U read alike.
    Sequences with other symbols score NaN (floored by :class:`Reward`). ``relaxed`` scores
    one-hot probabilities (N, L, V) differentiably, for DPS.

    Args:
        checkpoint: directory of the oracle network, written by ``train.py fit`` (``ExportBest``).
        output: ``raw`` (the network's output: a logit or a regression) or ``sigmoid`` (a classifier's
            probability).
        alphabet: the token order the network was trained on (T and U read alike).
        batch_size: sequences per network call.
        name: the reward's name in outputs (default ``oracle:<checkpoint directory name>``).
    """

    def __init__(self, checkpoint: str, output: str = "raw", alphabet: str = "ACGT", batch_size: int = 1024,
                 name: str | None = None) -> None:
        if output not in ("raw", "sigmoid"):
            raise ValueError(f"OracleReward.output must be 'raw' or 'sigmoid', got {output!r}")
        self.network = checkpoints.load(checkpoint).requires_grad_(False)
        self.output, self.alphabet, self.batch_size = output, alphabet, batch_size
        self.name = name or f"oracle:{checkpoint.rstrip('/').split('/')[-1]}"

    def _transform(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs if self.output == "raw" else torch.sigmoid(outputs)

    def __call__(self, sequences: list[str]) -> list[float]:
        tokens = tokenize(sequences, self.alphabet)
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
