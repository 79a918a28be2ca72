"""Molecule rewards and set metrics on SMILES strings ("" marks an invalid molecule, as ``to_smiles`` gives).

Per molecule: QED and synthetic accessibility normalised to [0, 1] as (10 - SA) / 9 (Ertl & Schuffenhauer's
score, RDKit Contrib), the rewards of the SVDD molecule experiments. Per set: validity, uniqueness and
novelty against a training set, as GDSS reports them.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd
from rdkit import Chem, rdBase
from rdkit.Chem import QED as RDKitQED
from rdkit.Contrib.SA_Score import sascorer

from ...core.reward import Reward
from ...core.workers import ChunkedWorkers
from ...paths import find


def parse(smiles: str) -> Chem.Mol | None:
    """The molecule of a SMILES string, None when it is empty or does not parse."""
    if not smiles:
        return None
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles)


def canonical(smiles: str) -> str:
    """Canonical SMILES of a SMILES string, "" when it is empty or does not parse."""
    mol = parse(smiles)
    return "" if mol is None else Chem.MolToSmiles(mol)


def qed_score(smiles: str) -> float | None:
    """QED (Bickerton et al. 2012) of a molecule, None when invalid."""
    mol = parse(smiles)
    return None if mol is None else float(RDKitQED.qed(mol))


def sa_score(smiles: str) -> float | None:
    """Synthetic accessibility mapped from [1 (easy), 10 (hard)] to [1, 0]: (10 - SA) / 9; None when invalid."""
    mol = parse(smiles)
    return None if mol is None else (10.0 - sascorer.calculateScore(mol)) / 9.0


def _score_chunk(score: Callable[[str], float | None], smiles: list[str]) -> list[float | None]:
    return [score(s) for s in smiles]


class _RDKitReward(Reward):
    """A per-molecule RDKit score over a list of SMILES, optionally over ``processes`` worker processes
    (:class:`ChunkedWorkers`: batches of at least 128 molecules, 64 or more per task)."""

    score: Callable[[str], float | None]

    def __init__(self, processes: int = 1) -> None:
        self.workers = ChunkedWorkers(processes, min_chunk=64, owner=self.name)

    def __call__(self, smiles: Sequence[str]) -> list[float | None]:
        return self.workers.map(partial(_score_chunk, self.score), smiles)

    def submit(self, smiles: Sequence[str]) -> Callable[[], list[float | None]]:
        """Start scoring in the worker processes and return at once (see :meth:`ChunkedWorkers.submit`)."""
        return self.workers.submit(partial(_score_chunk, self.score), smiles)

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        self.workers.close()


class QED(_RDKitReward):
    """Quantitative estimate of drug-likeness in [0, 1] (``rdkit.Chem.QED.qed``); None for invalid SMILES.

    Args:
        processes: worker processes that score in parallel (1: in this process).
    """

    name = "qed"
    unit = "QED, 0-1"
    score = staticmethod(qed_score)


class SA(_RDKitReward):
    """Synthetic accessibility as (10 - SA) / 9 in [0, 1], higher is easier; None for invalid SMILES.

    Args:
        processes: worker processes that score in parallel (1: in this process).
    """

    name = "sa"
    unit = "(10 - SA) / 9, 0-1"
    score = staticmethod(sa_score)


class Valid(Reward):
    """1 for a valid molecule, 0 for an invalid one: the per-sample ``valid`` column of a run."""

    name = "valid"

    def __call__(self, smiles: Sequence[str]) -> list[float]:
        return [float(bool(s)) for s in smiles]


def validity(smiles: Sequence[str]) -> float:
    """Fraction of all samples that are valid (non-empty); 0 for no samples."""
    return sum(bool(s) for s in smiles) / len(smiles) if smiles else 0.0


def uniqueness(smiles: Sequence[str]) -> float:
    """Distinct valid SMILES over valid SMILES (inputs canonical, as ``to_smiles`` gives); 0 when none is valid."""
    valid = [s for s in smiles if s]
    return len(set(valid)) / len(valid) if valid else 0.0


def novelty(smiles: Sequence[str], training_smiles: Iterable[str]) -> float:
    """Distinct valid SMILES not in the (canonicalised) training set over distinct valid SMILES; inputs
    canonical; 0 when none is valid."""
    return _novelty(smiles, {canonical(s) for s in training_smiles})


def _novelty(smiles: Sequence[str], training: set[str]) -> float:
    unique = {s for s in smiles if s}
    return len(unique - training) / len(unique) if unique else 0.0


class Novelty:
    """Novelty of sets of canonical SMILES against the ``SMILES`` column of a CSV (optionally gzipped),
    canonicalised once here (about a minute for QM9's 130k molecules); ``canonicalise: false`` for a file of
    RDKit canonical SMILES already (``assets/molecules/qm9_train_canonical.csv.gz``)."""

    name = "novelty"

    def __init__(self, path: str | Path, column: str = "SMILES", canonicalise: bool = True) -> None:
        path = find(path)
        if not path.is_file():
            raise FileNotFoundError(f"Novelty.path: no file at {path}; pass the training set's SMILES CSV")
        frame = pd.read_csv(path)
        if column not in frame.columns:
            raise ValueError(f"Novelty.column: {path} has no column {column!r}; its columns are {list(frame.columns)}")
        smiles = frame[column].astype(str)
        self.training = {canonical(s) for s in smiles} if canonicalise else set(smiles)

    def __call__(self, smiles: Sequence[str]) -> float:
        return _novelty(smiles, self.training)
