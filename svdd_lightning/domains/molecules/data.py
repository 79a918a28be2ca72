"""Molecule data sets as dense graphs: reading SMILES, a seeded split, DataModule, size statistics.

The default data are QM9's 130,831 molecules (up to 9 heavy atoms C, N, O, F; PyPI ``qm9pack==1.0.3``,
files ``qm9pack/data/qm9_part*.csv``) and MOSES (PyPI ``molsets==0.3.1``); any CSV with a ``SMILES``
column works. Graphs are built when the DataModule is set up (about a minute for QM9).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch.utils.data import TensorDataset

from ...lightning.splits import SplitDataModule
from .graphs import smiles_to_graph

SPLITS = ("train", "validation", "test")


def read_smiles(path: str | Path, column: str = "SMILES") -> list[str]:
    """The SMILES column of a CSV (optionally gzipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path: no file at {path} (get the molecules as docs/reproducing.md "
                                f"says, or pass --data.init_args.path)")
    frame = pd.read_csv(path)
    if column not in frame.columns:
        raise ValueError(f"data.path: {path} has no column {column!r}; its columns are {list(frame.columns)}")
    return frame[column].astype(str).tolist()


def split_of(smiles: str, val_fraction: float, test_fraction: float, seed: int) -> str:
    """train / validation / test by a seeded hash of the SMILES string (stable as data are added)."""
    u = int(hashlib.sha256(f"{seed}:{smiles}".encode()).hexdigest()[:12], 16) / 16**12
    return "test" if u < test_fraction else "validation" if u < test_fraction + val_fraction else "train"


def graphs_from_smiles(smiles: Sequence[str], atoms: Sequence[str], max_nodes: int) -> TensorDataset:
    """(X (M, N, F), A (M, N, N), flags (M, N)) of the molecules, as GDSS feeds its networks."""
    xs, adjs = zip(*(smiles_to_graph(s, atoms, max_nodes) for s in smiles))
    x, adj = torch.stack(xs), torch.stack(adjs)
    flags = (x.sum(dim=-1) > 0).float()
    return TensorDataset(x, adj, flags)


def node_count_distribution(flags: torch.Tensor, max_nodes: int) -> list[float]:
    """Empirical probability of each molecule size 1..max_nodes (the prior's size distribution)."""
    counts = torch.bincount(flags.sum(dim=1).long(), minlength=max_nodes + 1)[1:].double()
    return (counts / counts.sum()).tolist()


class MoleculeDataModule(SplitDataModule):
    """Batches of dense graphs (x, adj, flags) from a SMILES CSV, split by a seeded hash."""

    def __init__(self, path: str, atoms: Sequence[str] = ("C", "N", "O", "F"), max_nodes: int = 9,
                 val_fraction: float = 0.05, test_fraction: float = 0.1, split_seed: int = 0,
                 batch_size: int = 1024, num_workers: int = 0, smiles_column: str = "SMILES") -> None:
        super().__init__(batch_size, num_workers)
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"data.val_fraction + data.test_fraction must be in [0, 1), got {val_fraction} + "
                             f"{test_fraction}")
        self.path, self.atoms, self.max_nodes = path, tuple(atoms), max_nodes
        self.fractions, self.split_seed = (val_fraction, test_fraction), split_seed
        self.smiles_column = smiles_column
        self.smiles: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        smiles = read_smiles(self.path, self.smiles_column)
        for split in SPLITS:
            self.smiles[split] = [s for s in smiles if split_of(s, *self.fractions, self.split_seed) == split]
            if not self.smiles[split]:
                raise ValueError(f"data: the {split} split of {self.path} is empty; adjust data.val_fraction / "
                                 f"data.test_fraction")
            self.datasets[split] = graphs_from_smiles(self.smiles[split], self.atoms, self.max_nodes)

    def node_count_distribution(self) -> list[float]:
        self.setup()
        return node_count_distribution(self.datasets["train"].tensors[2], self.max_nodes)
