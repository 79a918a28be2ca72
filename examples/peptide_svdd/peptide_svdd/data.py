"""Training data generated on the fly: peptides from a fixed first-order Markov chain over the 20
amino acids. The chain is the "biology" the model has to learn; knowing it exactly lets a run check
that guided designs stay natural (their log-likelihood under the chain, :class:`MarkovLogLikelihood`)."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


class MarkovPeptides:
    """The data distribution: a start distribution and a peaked transition matrix, fixed by ``chain_seed``."""

    def __init__(self, chain_seed: int = 1234, sharpness: float = 2.0) -> None:
        g = torch.Generator().manual_seed(chain_seed)
        self.log_start = (torch.randn(20, generator=g) * sharpness).log_softmax(-1)
        self.log_transition = (torch.randn(20, 20, generator=g) * sharpness).log_softmax(-1)

    def sample(self, n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        """(n, seq_len) amino-acid indices."""
        tokens = torch.empty(n, seq_len, dtype=torch.long)
        tokens[:, 0] = torch.multinomial(self.log_start.exp(), n, replacement=True, generator=generator)
        for i in range(1, seq_len):
            tokens[:, i] = torch.multinomial(self.log_transition[tokens[:, i - 1]].exp(), 1, generator=generator)[:, 0]
        return tokens

    def log_likelihood(self, tokens: torch.Tensor) -> torch.Tensor:
        """Log-probability (nats) of each row under the chain."""
        return self.log_start[tokens[:, 0]] + self.log_transition[tokens[:, :-1], tokens[:, 1:]].sum(-1)


class PeptideDataModule(L.LightningDataModule):
    """Batches of peptides (amino-acid indices) drawn from :class:`MarkovPeptides`.

    Args:
        seq_len: peptide length.
        num_train: training peptides (drawn once, with ``seed``).
        num_val: validation peptides (another draw).
        batch_size: peptides per batch.
        seed: seed of the draws (the chain itself is fixed).
    """

    def __init__(self, seq_len: int = 12, num_train: int = 20000, num_val: int = 2000, batch_size: int = 256,
                 seed: int = 0) -> None:
        super().__init__()
        self.seq_len, self.num_train, self.num_val, self.batch_size, self.seed = seq_len, num_train, num_val, batch_size, seed

    def setup(self, stage: str) -> None:
        chain, g = MarkovPeptides(), torch.Generator().manual_seed(self.seed)
        self.train_set = TensorDataset(chain.sample(self.num_train, self.seq_len, g))
        self.val_set = TensorDataset(chain.sample(self.num_val, self.seq_len, g))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)
