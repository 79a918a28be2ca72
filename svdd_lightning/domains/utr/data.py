"""Human 5'UTRs with measured mean ribosome load: reading, a variant-safe split, DataModule.

The default data are the 3,002 50-nt human 5'UTRs and ClinVar variants of them whose mean ribosome
load (MRL) Sample et al. (2019, Nature Biotechnology 37:803) measured by polysome profiling (GEO
GSE114002; the paper's repository, ``human_5utrs/data/snv_phenotype_log_diff.csv``). Any CSV with a
sequence column, a target column and a group column works.

A UTR and its variants differ at one base, so a random split would leak: rows are split by group
(the gene), each gene wholly in train, validation or test.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import TensorDataset

from ...lightning.splits import SplitDataModule
from ...diffusion.tokens import encode

ALPHABET = "ACGU"
SPLITS = ("train", "validation", "test")


def encode_rna(sequences: list[str]) -> torch.Tensor:
    """Equal-length RNA (or DNA: T reads as U) strings -> token ids (N, L) over ACGU."""
    return encode(sequences, ALPHABET, kind="UTR sequences")


def group_split(groups: pd.Series, val_fraction: float, test_fraction: float, seed: int = 0) -> pd.Series:
    """Assign each group wholly to train / validation / test by a seeded hash of its name.

    The assignment of a group does not depend on which other groups are present, so adding data
    never moves a UTR between splits.
    """
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"data.val_fraction + data.test_fraction must be in [0, 1), got {val_fraction} + "
                         f"{test_fraction}")

    def bucket(name: str) -> str:
        u = int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:12], 16) / 16**12
        return "test" if u < test_fraction else "validation" if u < test_fraction + val_fraction else "train"

    return groups.astype(str).map(bucket)


def read_utrs(path: str | Path, sequence_column: str = "utr", target_column: str = "mrl",
              group_column: str = "gene_symbol") -> pd.DataFrame:
    """Read a UTR table (CSV, optionally gzipped) and check the columns this package needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path: no file at {path} (get the 5'UTR MRL table as docs/reproducing.md "
                                f"says, or pass --data.path)")
    frame = pd.read_csv(path)
    missing = [c for c in (sequence_column, target_column, group_column) if c not in frame.columns]
    if missing:
        raise ValueError(f"data.path: {path} lacks columns {missing}; its columns are {list(frame.columns)} "
                         f"(set data.sequence_column / target_column / group_column)")
    return frame


class UTRDataModule(SplitDataModule):
    """Batches of (tokens over ACGU, target) with a gene-wise train / validation / test split.

    The same module feeds the diffusion pretraining (targets unused) and the MRL oracle.
    """

    def __init__(self, path: str, sequence_column: str = "utr", target_column: str = "mrl",
                 group_column: str = "gene_symbol", val_fraction: float = 0.1, test_fraction: float = 0.1,
                 split_seed: int = 0, batch_size: int = 128, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.path = path
        self.columns = (sequence_column, target_column, group_column)
        self.fractions = (val_fraction, test_fraction)
        self.split_seed = split_seed

    def split_frame(self) -> pd.DataFrame:
        """The table with a ``split`` column (train / validation / test)."""
        sequence_column, target_column, group_column = self.columns
        frame = read_utrs(self.path, sequence_column, target_column, group_column)
        return frame.assign(split=group_split(frame[group_column], *self.fractions, seed=self.split_seed))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        sequence_column, target_column, _ = self.columns
        frame = self.split_frame()
        for split in SPLITS:
            rows = frame[frame["split"] == split]
            if rows.empty:
                raise ValueError(f"data: the {split} split of {self.path} is empty; adjust data.val_fraction / "
                                 f"data.test_fraction")
            tokens = encode_rna(rows[sequence_column].tolist())
            targets = torch.tensor(rows[target_column].to_numpy(), dtype=torch.float32)
            self.datasets[split] = TensorDataset(tokens, targets)
