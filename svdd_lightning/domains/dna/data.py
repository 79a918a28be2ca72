"""Cell-type-specific DNA regulatory regions: reading, selection by split/chromosome, DataModule.

The default data are 200-bp DNase-hypersensitive regions of four cell types (HepG2, K562, GM12878,
hESCT0) from the DNA-Diffusion project (PyPI ``dnadiffusion==0.0.0.dev0``, file
``data/K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt``; see docs/reproducing.md). Any TSV with the
columns ``sequence``, ``split``, ``cell_type`` and ``chr`` works.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import TensorDataset

from ...lightning.splits import SplitDataModule
from ...diffusion.tokens import encode

ALPHABET = "ACGT"
REQUIRED_COLUMNS = ("sequence", "split", "cell_type", "chr")


def encode_dna(sequences: list[str]) -> torch.Tensor:
    """Equal-length DNA strings -> token ids (N, L) over ACGT; a one-line error names a bad sequence."""
    return encode(sequences, ALPHABET, kind="DNA sequences")


def read_regions(path: str | Path) -> pd.DataFrame:
    """Read a regions TSV (optionally gzipped), checking the columns this package needs.

    The DNA-Diffusion release file itself is accepted too: its ``TAG`` (e.g. ``HepG2_ENCLB029COU``)
    becomes ``cell_type`` and its ``data_label`` (training / validation / test) becomes ``split``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path: no file at {path} (get the DHS regions as docs/reproducing.md "
                                f"says, or pass --data.path)")
    frame = pd.read_csv(path, sep="\t")
    if "cell_type" not in frame.columns and "TAG" in frame.columns:
        frame["cell_type"] = frame["TAG"].str.split("_").str[0]
    if "split" not in frame.columns and "data_label" in frame.columns:
        frame["split"] = frame["data_label"].replace({"training": "train"})
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"data.path: {path} lacks columns {missing}; expected {list(REQUIRED_COLUMNS)}")
    return frame


@dataclass
class RegionSelection:
    """Rows of the regions table: some splits, optionally restricted by chromosome."""

    splits: list[str] = field(default_factory=lambda: ["train"])
    include_chromosomes: list[str] | None = None
    exclude_chromosomes: list[str] = field(default_factory=list)

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        keep = frame["split"].isin(self.splits)
        if self.include_chromosomes is not None:
            keep &= frame["chr"].isin(self.include_chromosomes)
        if self.exclude_chromosomes:
            keep &= ~frame["chr"].isin(self.exclude_chromosomes)
        return frame[keep]


class DNARegionsDataModule(SplitDataModule):
    """Batches of (tokens, label) with label = 1 for the ``positive`` cell type (0 if none is given).

    The same module feeds the diffusion pretraining (labels unused) and the oracles.
    """

    splits = ("train", "val", "test")  # named like its constructor's selections

    def __init__(self, path: str, cell_types: list[str] | None = None, positive: str | None = None,
                 train: RegionSelection | None = None, val: RegionSelection | None = None,
                 test: RegionSelection | None = None, batch_size: int = 128, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.path, self.cell_types, self.positive = path, cell_types, positive
        self.selections = {
            "train": train or RegionSelection(["train"]),
            "val": val or RegionSelection(["validation"]),
            "test": test or RegionSelection(["test"]),
        }

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        frame = read_regions(self.path)
        if self.cell_types is not None:
            unknown = set(self.cell_types) - set(frame["cell_type"])
            if unknown:
                raise ValueError(f"data.cell_types: {sorted(unknown)} not in {sorted(frame['cell_type'].unique())}")
            frame = frame[frame["cell_type"].isin(self.cell_types)]
        if self.positive is not None and self.positive not in set(frame["cell_type"]):
            raise ValueError(f"data.positive: {self.positive!r} is not a cell type of {self.path}")
        for name, selection in self.selections.items():
            rows = selection.apply(frame)
            if rows.empty:
                raise ValueError(f"data.{name}: the selection {selection} matches no rows of {self.path}")
            tokens = encode_dna(rows["sequence"].tolist())
            labels = torch.tensor((rows["cell_type"] == self.positive).to_numpy(), dtype=torch.float32)
            self.datasets[name] = TensorDataset(tokens, labels)
