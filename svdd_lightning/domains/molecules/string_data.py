"""Molecules as padded token strings for masked diffusion: a SMILES CSV (e.g. MOSES), a seeded split.

Batches are (tokens (B, max_length), zeros (B,)), the (tokens, label) pairs that
:class:`~svdd_lightning.domains.sequences.training.MaskedDiffusionPretraining` reads (labels unused).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from ...lightning.splits import SplitDataModule
from .data import read_smiles, split_of
from .strings import Vocabulary, check_representation


class MoleculeStringsDataModule(SplitDataModule):
    """Token strings of the molecules of a SMILES CSV, split into train and validation by a seeded hash of
    each SMILES (stable as molecules are added). MOSES ships its own test set, which the sample metrics
    use (``benchmarks/moses_quality.py``), so there is no test split here.

    Args:
        path: a CSV (optionally gzipped) with a SMILES column.
        vocabulary: the vocabulary JSON (e.g. ``assets/molecules/moses_smiles_vocab.json``).
        representation: smiles or selfies; must be the vocabulary's.
        max_molecules: read only the first this many molecules (quick runs); None reads all.
        val_fraction: the share of molecules in the validation split.
        split_seed: the seed of the split's hash.
        smiles_column: the CSV column holding the SMILES.
    """

    def __init__(self, path: str, vocabulary: str, representation: str = "smiles", max_molecules: int | None = None,
                 val_fraction: float = 0.05, split_seed: int = 0, batch_size: int = 256, num_workers: int = 0,
                 smiles_column: str = "SMILES") -> None:
        super().__init__(batch_size, num_workers)
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if max_molecules is not None and max_molecules < 2:
            raise ValueError(f"data.max_molecules must be >= 2 (or null for all), got {max_molecules}")
        self.path, self.vocabulary_path, self.representation = path, vocabulary, check_representation(representation)
        self.max_molecules, self.val_fraction, self.split_seed = max_molecules, val_fraction, split_seed
        self.smiles_column = smiles_column
        self.smiles: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        vocabulary = Vocabulary.load(self.vocabulary_path)
        if vocabulary.representation != self.representation:
            raise ValueError(f"data.representation: {self.representation!r}, but the vocabulary "
                             f"{self.vocabulary_path} is for {vocabulary.representation!r}; pass a matching one")
        smiles = read_smiles(self.path, self.smiles_column)[: self.max_molecules]
        for split in ("train", "validation"):
            self.smiles[split] = [s for s in smiles if (split_of(s, self.val_fraction, 0.0, self.split_seed) == split)]
            if not self.smiles[split]:
                raise ValueError(f"data: the {split} split of {self.path} is empty; adjust data.val_fraction or "
                                 f"data.max_molecules")
            tokens = vocabulary.encode(self.smiles[split])
            self.datasets[split] = TensorDataset(tokens, torch.zeros(len(tokens)))

    def test_dataloader(self) -> DataLoader:
        raise ValueError("MoleculeStringsDataModule has no test split; score samples against the test set with "
                         "benchmarks/moses_quality.py")
