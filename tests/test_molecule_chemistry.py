"""Molecule chemistry: SMILES <-> graphs (GDSS decoding, valency correction), RDKit rewards, set metrics."""
import pickle

import pandas as pd
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import QED as RDKitQED
from rdkit.Contrib.SA_Score import sascorer

from svdd_lightning.core.reward import GuardedReward
from svdd_lightning.domains.molecules.graphs import (ATOM_SETS, correct_valency, graphs_to_molecules,
                                                     smiles_to_graph, to_smiles)
from svdd_lightning.domains.molecules.rewards import QED, SA, Novelty, novelty, uniqueness, validity

QM9 = ATOM_SETS["qm9"]
KNOWN = ["CCO", "C1=CC=CC=C1", "N#CC(=O)O", "OC1COC1", "FC(F)F", "C=CC#N", "CC1=NC=CN1", "O=C1CC2OC12", "C#C"]


def canon(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


def batch(smiles: list[str], atoms=QM9, max_nodes: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, adjs = zip(*(smiles_to_graph(s, atoms, max_nodes) for s in smiles))
    x = torch.stack(xs)
    return x, torch.stack(adjs), x.sum(dim=-1) > 0


def test_graph_encoding():
    x, adj = smiles_to_graph("C1=CC=CC=C1", QM9, 9)
    assert x.shape == (9, 4) and adj.shape == (9, 9)
    assert x[:6, 0].eq(1).all() and x[6:].eq(0).all() and x.sum() == 6
    assert torch.equal(adj, adj.T) and adj.diagonal().eq(0).all()
    assert sorted(adj.triu().flatten().tolist())[-6:] == [1, 1, 1, 2, 2, 2]  # kekulised: no aromatic 1.5
    x, adj = smiles_to_graph("N#CC(=O)O", QM9, 5)
    assert x[0, 1] == 1 and adj[0, 1] == 3 and adj.max() == 3


def test_round_trip_in_one_batch_of_mixed_sizes():
    x, adj, mask = batch(KNOWN)
    assert mask.sum(dim=1).unique().numel() > 3
    assert to_smiles(graphs_to_molecules(x, adj, mask, QM9)) == [canon(s) for s in KNOWN]
    assert to_smiles(correct_valency(x, adj, mask, QM9)) == [canon(s) for s in KNOWN]
    x, adj, mask = batch(["ClC1=CSC=C1Br", "CP(=O)(O)O", "CI"], ATOM_SETS["zinc"], 12)
    assert to_smiles(graphs_to_molecules(x, adj, mask.float(), ATOM_SETS["zinc"])) == \
        ["Clc1cscc1Br", "CP(=O)(O)O", "CI"]


def test_padding_nodes_and_noisy_values_are_ignored():
    x, adj, mask = batch(["CCO"])
    noisy_x, noisy_adj = x.clone(), adj.clone()
    noisy_x[0, 3:] = 0.9  # padding rows with atom-like features, masked out
    noisy_adj[0, 3:, :] = 2.0
    noisy_adj[0, :, 3:] = 2.0
    noisy_adj[0, 0, 1], noisy_adj[0, 1, 0] = 1.3, 1.1  # averages to 1.2: single
    noisy_adj[0, 0, 2], noisy_adj[0, 2, 0] = 0.6, 0.2  # averages to 0.4: no bond
    noisy_x[0, 0] = torch.tensor([0.7, 0.1, 0.2, -0.3])
    assert to_smiles(graphs_to_molecules(noisy_x, noisy_adj, mask, QM9)) == ["CCO"]


def test_no_atom_rule_follows_gdss():
    x = torch.zeros(1, 3, 4)
    x[0, 0] = torch.tensor([0.6, 0.9, 0.0, 0.0])  # first channel above 0.5 wins (C), not the largest (N)
    x[0, 1] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # O
    x[0, 2] = torch.tensor([0.5, 0.4, 0.0, 0.0])  # nothing above 0.5: no atom, though its mask is 1
    adj = torch.zeros(1, 3, 3)
    adj[0, 0, 1] = adj[0, 1, 0] = 1.0
    adj[0, 0, 2] = adj[0, 2, 0] = 1.0
    assert to_smiles(graphs_to_molecules(x, adj, torch.ones(1, 3), QM9)) == ["CO"]
    assert graphs_to_molecules(torch.zeros(1, 3, 4), adj, torch.ones(1, 3), QM9) == [None]


def test_impossible_valence_needs_correction():
    x = torch.zeros(1, 6, 4)
    x[0, :, 0] = 1  # six carbons
    adj = torch.zeros(1, 6, 6)
    adj[0, 0, 1:] = adj[0, 1:, 0] = 1  # the first with five single bonds
    mask = torch.ones(1, 6, dtype=torch.bool)
    assert graphs_to_molecules(x, adj, mask, QM9) == [None]
    corrected = correct_valency(x, adj, mask, QM9)
    assert to_smiles(corrected) == ["CC(C)(C)C"]  # GDSS removes one bond; the methane fragment is dropped
    assert to_smiles(correct_valency(x, adj, mask, QM9, largest_fragment=False)) == ["C.CC(C)(C)C"]


def test_correction_lowers_the_highest_order_bond():
    x, adj, mask = batch(["C=CC"])
    adj[0, 1, 2] = adj[0, 2, 1] = 3.0  # C=C#C: the middle carbon has valence 5
    assert graphs_to_molecules(x, adj, mask, QM9) == [None]
    assert to_smiles(correct_valency(x, adj, mask, QM9)) == ["C=C=C"]


def test_gdss_charges_nitrogen_one_over_its_valence():
    x, adj, mask = batch(["CN(C)C"])
    x[0, 4, 0], mask[0, 4] = 1, True
    adj[0, 1, 4] = adj[0, 4, 1] = 1  # a fourth bond on N
    assert to_smiles(graphs_to_molecules(x, adj, mask, QM9)) == ["C[N+](C)(C)C"]
    assert graphs_to_molecules(x, adj, mask, QM9, charges=False) == [None]


def test_largest_fragment():
    x, adj, mask = batch(["CCO.C"])
    assert to_smiles(graphs_to_molecules(x, adj, mask, QM9)) == ["CCO"]
    assert to_smiles(graphs_to_molecules(x, adj, mask, QM9, largest_fragment=False)) == ["C.CCO"]


@pytest.mark.parametrize("smiles, max_nodes, match", [
    ("CCS", 9, "atom S"), ("CCCCCCCCCC", 9, "max_nodes=9"), ("C1CC", 9, "cannot parse")])
def test_encoding_errors(smiles, max_nodes, match):
    with pytest.raises(ValueError, match=match):
        smiles_to_graph(smiles, QM9, max_nodes)


def test_decoding_shape_errors():
    x, adj, mask = batch(["CCO"])
    with pytest.raises(ValueError, match="len\\(atoms\\)"):
        graphs_to_molecules(x, adj, mask, ATOM_SETS["zinc"])
    with pytest.raises(ValueError, match="mask"):
        graphs_to_molecules(x, adj, mask[:, :5], QM9)


def test_qed_and_sa():
    smiles = [canon(s) for s in KNOWN] + ["CC(=O)Oc1ccccc1C(=O)O", "", "not a smiles"]
    qed, sa = QED()(smiles), SA()(smiles)
    assert qed[-2:] == [None, None] and sa[-2:] == [None, None]
    for s, q, a in zip(smiles[:-2], qed, sa):
        mol = Chem.MolFromSmiles(s)
        assert 0 < q < 1 and q == pytest.approx(RDKitQED.qed(mol))
        assert 0 < a <= 1 and a == pytest.approx((10 - sascorer.calculateScore(mol)) / 9)
    assert QED.name == "qed" and SA.name == "sa"
    assert GuardedReward(SA(), floor=0.0)(["CCO", ""]).tolist()[1] == 0.0


def test_parallel_scores_equal_serial():
    smiles = ([canon(s) for s in KNOWN] + [""]) * 15
    parallel = SA(processes=2)
    try:
        assert len(smiles) >= 2 * parallel.workers.min_chunk
        assert parallel(smiles) == SA()(smiles)
        assert parallel.workers._pool is not None
        restored = pickle.loads(pickle.dumps(parallel))
        assert restored.workers._pool is None and restored.workers.processes == 2
    finally:
        parallel.close()


def test_set_metrics(tmp_path):
    samples = ["CCO", "", "CCO", "C", "CC", ""]
    assert validity(samples) == pytest.approx(4 / 6)
    assert uniqueness(samples) == pytest.approx(3 / 4)
    assert novelty(samples, ["OCC", "C", "bad smiles"]) == pytest.approx(1 / 3)
    assert validity([]) == uniqueness(["", ""]) == novelty([""], ["C"]) == 0.0
    path = tmp_path / "train.csv.gz"
    pd.DataFrame({"SMILES": ["OCC", "C", "C1=CC=CC=C1"]}).to_csv(path, index=False)
    metric = Novelty(str(path))
    assert metric(samples) == pytest.approx(1 / 3) and metric(["c1ccccc1", "N"]) == 0.5
    with pytest.raises(ValueError, match="column"):
        Novelty(path, column="smiles")
