"""The MOSES benchmark's set metrics (Polykovskiy et al. 2020) on canonical SMILES ("" marks an invalid sample).

Validity and novelty are those of :mod:`.rewards` (MOSES's definitions); here are unique@k, internal
diversity (1 - mean Tanimoto similarity of all pairs, self-pairs included, on Morgan fingerprints of
radius 2 and 1024 bits), the Frechet ChemNet Distance to a reference set (the ``fcd`` package, whose
ChemNet weights ship with it: no network) and Wasserstein-1 distances of QED, SA (the raw 1-10 score),
logP and molecular weight to a reference set. As MOSES, every metric but validity and unique@k reads
the valid samples, duplicates kept. Each is a callable on a method's samples, for a decode config's
``writer.set_metrics``.
"""
from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from rdkit import DataStructs
from rdkit.Chem import QED, Crippen, Descriptors, rdFingerprintGenerator
from rdkit.Contrib.SA_Score import sascorer
from scipy.stats import wasserstein_distance

from ...paths import find
from .data import read_smiles
from .rewards import canonical, parse

#: MOSES's molecular properties, on an RDKit molecule
PROPERTIES: dict[str, Callable] = {"qed": QED.qed, "sa": sascorer.calculateScore, "logp": Crippen.MolLogP,
                                   "weight": Descriptors.MolWt}


def unique_at(smiles: Sequence[str], k: int) -> float:
    """Distinct molecules among the first ``k`` valid ones (all valid ones when fewer) over their number;
    0 when none is valid."""
    valid = [s for s in smiles if s][:k]
    return len(set(valid)) / len(valid) if valid else 0.0


class UniqueAtK:
    """unique@k (MOSES reports k = 1,000 and 10,000) as a set metric."""

    def __init__(self, k: int = 1000) -> None:
        if k < 1:
            raise ValueError(f"UniqueAtK.k must be >= 1, got {k}")
        self.k = k

    def __call__(self, smiles: Sequence[str]) -> float:
        return unique_at(smiles, self.k)


def internal_diversity(smiles: Sequence[str]) -> float:
    """1 - the mean Tanimoto similarity over all ordered pairs of valid molecules (self-pairs included);
    NaN when none is valid."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fingerprints = [generator.GetFingerprint(parse(s)) for s in smiles if s]
    if not fingerprints:
        return float("nan")
    total = sum(sum(DataStructs.BulkTanimotoSimilarity(fp, fingerprints)) for fp in fingerprints)
    return 1.0 - total / len(fingerprints) ** 2


def reference_smiles(path: str | Path, column: str = "SMILES", max_molecules: int | None = None,
                     seed: int = 0) -> list[str]:
    """The valid canonical SMILES of a reference CSV; a seeded sample of ``max_molecules`` of them if given."""
    smiles = read_smiles(find(path), column)
    if max_molecules is not None and max_molecules < len(smiles):
        smiles = random.Random(seed).sample(smiles, max_molecules)
    return [s for s in map(canonical, smiles) if s]


class FCD:
    """The Frechet ChemNet Distance of the valid samples to the molecules of a reference CSV (MOSES: its test
    set); the reference's ChemNet statistics are computed once, here. NaN when fewer than 2 samples are valid.

    Args:
        path: the reference CSV (optionally gzipped).
        column: its SMILES column.
        max_molecules: a seeded sample of this many reference molecules (None: all).
        device: where ChemNet runs (None: a GPU if there is one).
    """

    def __init__(self, path: str | Path, column: str = "SMILES", max_molecules: int | None = None,
                 device: str | None = None) -> None:
        import fcd

        self.fcd, self.device = fcd, device
        self.model = fcd.load_ref_model()
        self.reference = self._statistics(reference_smiles(path, column, max_molecules))

    def _statistics(self, smiles: list[str]) -> tuple[np.ndarray, np.ndarray]:
        activations = self.fcd.get_predictions(self.model, smiles, n_jobs=0, device=self.device)  # in this process
        return activations.mean(axis=0), np.cov(activations.T)

    def __call__(self, smiles: Sequence[str]) -> float:
        valid = [s for s in smiles if s]
        if len(valid) < 2:
            return float("nan")
        mu, sigma = self._statistics(valid)
        return float(self.fcd.calculate_frechet_distance(mu, sigma, *self.reference))


@lru_cache(maxsize=8)
def _reference_values(path: str, column: str, max_molecules: int | None, name: str) -> np.ndarray:
    return property_values(reference_smiles(path, column, max_molecules), name)


def property_values(smiles: Sequence[str], name: str) -> np.ndarray:
    """A MOSES property (qed, sa, logp or weight) of each valid molecule."""
    if name not in PROPERTIES:
        raise ValueError(f"property must be one of {', '.join(PROPERTIES)}, got {name!r}")
    return np.array([PROPERTIES[name](parse(s)) for s in smiles if s], dtype=float)


class PropertyDistance:
    """The Wasserstein-1 distance between a property's distribution over the valid samples and over the
    molecules of a reference CSV (computed once per file and property); NaN when no sample is valid.

    Args:
        path: the reference CSV (optionally gzipped; MOSES: its test set).
        property: qed, sa (the raw score, 1 easy to 10 hard), logp (Crippen) or weight (g/mol).
        column: its SMILES column.
        max_molecules: a seeded sample of this many reference molecules (None: all).
    """

    def __init__(self, path: str | Path, property: str = "qed", column: str = "SMILES",
                 max_molecules: int | None = None) -> None:
        if property not in PROPERTIES:
            raise ValueError(f"PropertyDistance.property must be one of {', '.join(PROPERTIES)}, got {property!r}")
        self.property = property
        self.reference = _reference_values(str(path), column, max_molecules, property)

    def __call__(self, smiles: Sequence[str]) -> float:
        values = property_values(smiles, self.property)
        return float(wasserstein_distance(values, self.reference)) if len(values) else float("nan")
