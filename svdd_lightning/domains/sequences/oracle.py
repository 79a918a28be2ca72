"""A trained sequence oracle network, read from a safe checkpoint, as a batched reward."""
from __future__ import annotations

import math
from typing import Any

import torch

from ... import checkpoints
from ...core.precision import float32_scoring
from ...core.reward import Reward
from ...diffusion.tokens import tokenize


class OracleReward(Reward):
    """Scores sequence strings with an oracle network saved by ``train.py fit`` (``ExportBest``).

    ``output="raw"`` returns the network's output (a classifier's logit, e.g. the HepG2 reward, or a
    regressor's prediction, e.g. mean ribosome load); ``"sigmoid"`` its sigmoid (a classifier's
    probability). ``alphabet`` is the token order the network was trained on; T and U read alike.
    Sequences with other symbols score NaN (the run floors them). ``relaxed`` scores
    one-hot probabilities (N, L, V) differentiably, for DPS. ``score_states`` reads a masked diffusion
    model's token states on its device, without decoding them to strings (SVDD-PM's hot path).
    Scores are computed in float32 (autocast off).

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

    def check_model(self, model: Any) -> None:
        """Refuse a sequence model with symbols this oracle's ``alphabet`` cannot read (every sample would
        score NaN)."""
        symbols = getattr(model, "alphabet", None)
        if not isinstance(symbols, str):
            return
        unreadable = [c for c, token in zip(symbols, tokenize([symbols], self.alphabet)[0].tolist()) if token < 0]
        if unreadable:
            raise ValueError(f"{type(self).__name__}.alphabet {self.alphabet!r} cannot read the model's symbols "
                             f"{unreadable} (the model's alphabet is {symbols!r}); set it to the symbols, in order, "
                             f"that the reward was trained on")

    def _transform(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs if self.output == "raw" else torch.sigmoid(outputs)

    def __call__(self, sequences: list[str]) -> list[float]:
        return self._score_tokens(tokenize(sequences, self.alphabet)).cpu().tolist()

    def score_states(self, model: Any, x0: Any) -> torch.Tensor | None:
        """Scores of clean token states of a model with an ``alphabet`` (a :class:`MaskedDiffusion`), on the
        oracle's device: the model's tokens are mapped to the oracle's (T and U alike) and scored as
        ``__call__`` scores their decoded strings; None for states of other models."""
        alphabet = getattr(model, "alphabet", None)
        mask_id = getattr(model, "mask_id", None)
        if not isinstance(alphabet, str) or mask_id != len(alphabet) or not isinstance(x0, torch.Tensor) \
                or x0.is_floating_point() or x0.dim() != 2:
            return None
        # the model's token ids -> this oracle's (-1: not in its alphabet); the mask decodes as "N"
        table = tokenize([alphabet + "N"], self.alphabet)[0].to(x0.device)
        return self._score_tokens(table[x0])

    def _score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scores (N,) of oracle tokens (N, L), NaN for rows with a -1, on the oracle's device."""
        device = next(self.network.parameters()).device
        tokens = tokens.to(device)
        ok = (tokens >= 0).all(dim=1) & (tokens.shape[1] > 0)
        scores = torch.full((tokens.shape[0],), math.nan, device=device)
        if bool(ok.any()):
            chosen = tokens[ok]
            with torch.no_grad(), float32_scoring():
                out = torch.cat([self.network(chunk).float() for chunk in chosen.split(self.batch_size)])
            scores[ok] = self._transform(out)
        return scores

    def to(self, device: torch.device | str) -> "OracleReward":
        """Move the oracle network (``DecodingModule`` does this for the run's device)."""
        self.network.to(device)
        return self

    def relaxed(self, probs: torch.Tensor) -> torch.Tensor:
        with float32_scoring():
            return self._transform(self.network(probs.float()))
