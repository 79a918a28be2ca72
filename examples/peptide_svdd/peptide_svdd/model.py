"""A masked (absorbing-state) diffusion model of peptides, written against svdd-lightning's model
interface (:class:`svdd_lightning.DiffusionModel`) from scratch.

Level k = 0 .. T has time t = 1 - k / T; at time t each position is masked with probability t.
A step from t to s unmasks each masked position with probability (t - s) / t, drawing its amino acid
from the denoiser's p(x_0 | x_t); unmasked positions stay. The denoiser does not take the time, so
``denoiser_uses_level`` is False and a state that did not change reuses its prediction.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from svdd_lightning import Configurable, DiffusionModel
from svdd_lightning.sample_files import FastaFiles

from .data import AMINO_ACIDS

MASK = len(AMINO_ACIDS)  # token 20


class PeptideDenoiser(Configurable, nn.Module):
    """Tokens (B, L) over 20 amino acids and [MASK] -> logits (B, L, 20): a small transformer encoder.

    Args:
        seq_len: peptide length L.
        width: model width.
        layers: transformer layers.
        heads: attention heads.
    """

    def __init__(self, seq_len: int = 12, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(MASK + 1, width)
        self.position = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, MASK)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.position))


class PeptideDiffusion(Configurable, DiffusionModel):
    """The peptide model as svdd-lightning's decoders see it. States are token tensors (B, L) on the CPU.

    Args:
        seq_len: peptide length L.
        num_steps: sampling steps T.
        width: the denoiser's width.
        layers: the denoiser's transformer layers.
        weights: a ``model.safetensors`` of this model to load (as written by ``train.py fit``).
    """

    denoiser_uses_level = False

    def __init__(self, seq_len: int = 12, num_steps: int = 24, width: int = 64, layers: int = 2,
                 weights: str | None = None) -> None:
        super().__init__()
        self.seq_len, self.num_steps = seq_len, num_steps
        self.denoiser = PeptideDenoiser(seq_len, width, layers)
        if weights is not None:
            self.load_state_dict(load_file(weights))

    # --- the interface ------------------------------------------------------------------------------
    def initial_state(self, generators: Sequence[torch.Generator], conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Level 0: every position masked (the prior has no randomness)."""
        return torch.full((len(generators), self.seq_len), MASK, dtype=torch.long)

    def denoise(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """log p(x_0 | x_t) per position, (B, L, 20): one denoiser call per row."""
        device = next(self.parameters()).device
        return self.denoiser(x.to(device)).float().log_softmax(-1).cpu()

    def propose(self, x: torch.Tensor, prediction: torch.Tensor, level: int,
                generators: Sequence[torch.Generator], num_candidates: int) -> torch.Tensor:
        """``num_candidates`` draws of x_{k+1} per row; row b's come from ``generators[b]`` alone."""
        t, s = self.time(level), self.time(level + 1)
        probs = prediction.exp()
        rows = []
        for b, g in enumerate(generators):
            drawn = torch.multinomial(probs[b], num_candidates, replacement=True, generator=g).T  # (M, L)
            unmask = torch.rand((num_candidates, self.seq_len), generator=g) < (t - s) / t
            current = x[b].expand(num_candidates, -1)
            rows.append(torch.where((current == MASK) & unmask, drawn, current))
        return torch.cat(rows)

    def x0_hat(self, x: torch.Tensor, prediction: torch.Tensor, level: int) -> torch.Tensor:
        """The most likely clean peptide: masked positions take the denoiser's argmax."""
        return torch.where(x == MASK, prediction.argmax(-1), x)

    def decode(self, x0: torch.Tensor) -> list[str]:
        """Token rows -> peptide strings ("-" for a position still masked)."""
        letters = AMINO_ACIDS + "-"
        return ["".join(letters[i] for i in row) for row in x0.tolist()]

    def sample_files(self) -> FastaFiles:
        """A decoding run writes the peptides as FASTA."""
        return FastaFiles()

    def forward_noise(self, x0: torch.Tensor, level: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """x_k ~ q(x_k | x_0): each position masked with probability t_k."""
        u = torch.stack([torch.rand(self.seq_len, generator=g) for g in generators])
        return torch.where(u < self.time(level), MASK, x0)

    # --- training -------------------------------------------------------------------------------------
    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The continuous-time NELBO per position (nats): t ~ U(0, 1), mask with probability t, and
        cross-entropy on the masked positions weighted by 1 / t."""
        t = torch.rand(len(x0), 1, generator=generator).clamp_(min=1e-3).to(x0.device)
        masked = torch.rand(x0.shape, generator=generator).to(x0.device) < t
        logits = self.denoiser(torch.where(masked, MASK, x0))
        nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        return (nll * masked / t).sum(-1).mean() / self.seq_len
