"""MOSES set metrics on a handful of molecules with known answers."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from svdd_lightning.domains.molecules.moses_metrics import (FCD, PropertyDistance, UniqueAtK, internal_diversity,
                                                           property_values, unique_at)
from svdd_lightning.domains.molecules.rewards import Novelty, validity

REFERENCE = ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "CCCC", "c1ccncc1", "OCC(O)CO", "CC(C)C"]


@pytest.fixture
def reference_csv(tmp_path):
    pd.DataFrame({"SMILES": REFERENCE}).to_csv(tmp_path / "reference.csv", index=False)
    return tmp_path / "reference.csv"


def test_validity_unique_at_k_and_novelty():
    assert validity(["CCO", "", "CCN", "CCC"]) == 0.75
    assert unique_at(["CCO", "", "CCO", "CCN"], 2) == 0.5  # the first 2 valid: CCO twice
    assert unique_at(["CCO", "CCO", "CCN"], 1000) == 2 / 3 and UniqueAtK(1)(["CCO", "CCN"]) == 1.0
    assert unique_at(["", ""], 10) == 0.0
    with pytest.raises(ValueError, match="UniqueAtK.k"):
        UniqueAtK(0)


def test_novelty_against_a_training_file(reference_csv):
    assert Novelty(reference_csv)(["CCO", "CCO", "CCCO", "", "CCN"]) == 1 / 3  # of {CCO, CCCO, CCN}, CCCO is new


def test_internal_diversity_is_zero_for_identical_molecules_and_counts_self_pairs():
    assert internal_diversity(["c1ccccc1"] * 3 + [""]) == 0.0
    two = internal_diversity(["CCO", "c1ccccc1"])
    assert 0.45 < two <= 0.5  # 1 - (2 + 2 T) / 4 with T near 0
    assert math.isnan(internal_diversity(["", ""]))


def test_property_distances_are_zero_to_the_reference_itself_and_name_a_bad_property(reference_csv):
    for name in ("qed", "sa", "logp", "weight"):
        assert PropertyDistance(reference_csv, name)(REFERENCE + [""]) == pytest.approx(0.0, abs=1e-12)
    # methane (16.04 g/mol) is lighter than every reference molecule: W1 = their mean weight - 16.04
    weights = property_values(REFERENCE, "weight")
    assert property_values(["CCO"], "weight")[0] == pytest.approx(46.069, abs=1e-3)
    assert PropertyDistance(reference_csv, "weight")(["C"] * 3) == pytest.approx(weights.mean() - 16.043, abs=1e-3)
    with pytest.raises(ValueError, match="PropertyDistance.property must be one of qed, sa, logp, weight"):
        PropertyDistance(reference_csv, "tpsa")


def test_fcd_is_zero_to_the_reference_itself_and_reads_valid_samples_only(reference_csv):
    fcd = FCD(reference_csv, device="cpu")  # ChemNet pads every SMILES to 350 steps: one call per set here
    assert abs(fcd(REFERENCE + [""])) < 1e-3
    assert math.isnan(fcd(["CCO", ""]))
