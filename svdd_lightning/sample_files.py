"""How a decoding run writes one method's samples: FASTA for sequences, JSON lines by default; and the
reading of FASTA files (designs and reference sets).

A model chooses its files with a ``sample_files()`` method (a masked sequence model returns
:class:`FastaFiles`; a domain's model its own, e.g. SMILES and drawings for molecules); a model
without one gets :class:`JsonlFiles`, which hold any JSON-able sample, tensors and arrays included.
A config's ``writer.sample_files`` overrides both.
"""
from __future__ import annotations

import gzip
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .paths import find


class SampleFiles(ABC):
    """Writes one method's samples in their domain's formats; ``column`` names them in samples.csv.

    ``encode``/``decode`` convert samples to and from the JSON-able form stored in the parts files,
    ``csv_value`` gives a sample's entry in samples.csv; all three default to the sample itself.
    ``reward_name`` (set by the writer) names the reward in titles and legends.
    """

    column: str = "sample"
    reward_name: str = "reward"

    def encode(self, sample: Any) -> Any:
        """The JSON-able form ``sample`` is stored in; distinct samples need distinct stored forms."""
        return sample

    def decode(self, stored: Any) -> Any:
        """The sample of its stored form (the inverse of :meth:`encode`)."""
        return stored

    def csv_value(self, method: str, row: dict) -> Any:
        """The entry of ``row`` (a decoded row of ``method``) in the ``column`` of samples.csv."""
        return row["sample"]

    @abstractmethod
    def write(self, output_dir: Path, method: str, rows: list[dict]) -> None:
        """``rows``: the method's rows sorted by index, each with ``index``, ``sample`` and ``reward``."""


class FastaFiles(SampleFiles):
    """``<method>.fasta``, one record per design with its reward in the header."""

    column = "sequence"

    def write(self, output_dir: Path, method: str, rows: list[dict]) -> None:
        with open(output_dir / f"{method}.fasta", "w") as handle:
            for r in rows:
                handle.write(f">{method}_{r['index']} reward={r['reward']:.4f}\n{r['sample']}\n")


def read_fasta(path: str | Path) -> list[str]:
    """Sequences of a FASTA file (optionally gzipped)."""
    path = find(path)
    if not path.is_file():
        raise FileNotFoundError(f"no FASTA file at {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    sequences, current = [], []
    with opener(path, "rt") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith(">"):
                if current:
                    sequences.append("".join(current))
                current = []
            elif line:
                current.append(line)
    if current:
        sequences.append("".join(current))
    return sequences


class JsonlFiles(SampleFiles):
    """``<method>.jsonl``: one JSON object per sample (``index``, ``reward``, ``sample``).

    Tensors and arrays are stored as ``{"tensor": nested lists, "dtype": ...}`` and come back as
    tensors; strings, numbers, lists and dicts as themselves.
    """

    def encode(self, sample: Any) -> Any:
        if isinstance(sample, np.ndarray):
            sample = torch.from_numpy(sample)
        if isinstance(sample, torch.Tensor):
            return {"tensor": sample.detach().cpu().tolist(), "dtype": str(sample.dtype).removeprefix("torch.")}
        return sample

    def decode(self, stored: Any) -> Any:
        if isinstance(stored, dict) and set(stored) == {"tensor", "dtype"}:
            return torch.tensor(stored["tensor"], dtype=getattr(torch, stored["dtype"]))
        return stored

    def csv_value(self, method: str, row: dict) -> Any:
        sample = row["sample"]
        if isinstance(sample, (str, int, float)):
            return sample
        stored = self.encode(sample)
        return json.dumps(stored["tensor"] if isinstance(sample, (torch.Tensor, np.ndarray)) else stored)

    def write(self, output_dir: Path, method: str, rows: list[dict]) -> None:
        with open(output_dir / f"{method}.jsonl", "w") as handle:
            for r in rows:
                handle.write(json.dumps({"index": r["index"], "reward": r["reward"],
                                         "sample": self.encode(r["sample"])}) + "\n")


def sample_files_for(model: Any) -> SampleFiles:
    """The model's own sample files (its ``sample_files()``), else :class:`JsonlFiles`."""
    hook = getattr(model, "sample_files", None)
    files = hook() if callable(hook) else None
    if files is not None and not isinstance(files, SampleFiles):
        raise TypeError(f"{type(model).__name__}.sample_files() returned a {type(files).__name__}, not SampleFiles")
    return files or JsonlFiles()
