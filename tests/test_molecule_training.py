"""Molecule data as dense graphs and GDSS pretraining through train.py, on tiny data and networks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svdd_lightning import PretrainedSampling, checkpoints
from svdd_lightning.domains.molecules.data import MoleculeDataModule, node_count_distribution, split_of
from svdd_lightning.domains.molecules.graph_diffusion import GraphDiffusion
from svdd_lightning.domains.molecules.sde import VESDE
from svdd_lightning.domains.molecules.training import score_matching_loss

from tiny_dna import run_main

SMILES = ["C", "CC", "CCO", "CC=O", "C#N", "OCCO", "CC(C)O", "CCN", "C1CC1", "FC(F)F", "CC#CC", "OC=O",
          "NC=O", "CCCO", "C1CO1", "CN(C)C", "OCC#N", "CC(=O)O", "C1=CC=CN=C1", "CCOCC"] * 3


@pytest.fixture(scope="module")
def smiles_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mol") / "mols.csv"
    path.write_text("SMILES\n" + "\n".join(f"{s}" for s in SMILES) + "\n")
    return path


def test_datamodule_builds_masked_graphs_and_size_distribution(smiles_csv):
    dm = MoleculeDataModule(str(smiles_csv), max_nodes=9, val_fraction=0.2, test_fraction=0.2, batch_size=4)
    dm.setup()
    x, adj, flags = dm.datasets["train"].tensors
    assert x.shape[1:] == (9, 4) and adj.shape[1:] == (9, 9)
    assert torch.equal(adj, adj.transpose(1, 2)) and set(adj.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert torch.equal(flags, (x.sum(-1) > 0).float())
    probs = dm.node_count_distribution()
    assert len(probs) == 9 and abs(sum(probs) - 1) < 1e-9
    assert node_count_distribution(torch.tensor([[1.0, 1, 0], [1.0, 0, 0]]), 3) == [0.5, 0.5, 0.0]
    # one SMILES string always lands in the same split
    assert {split_of("CCO", 0.2, 0.2, 0) for _ in range(3)} == {split_of("CCO", 0.2, 0.2, 0)}


def test_score_matching_loss_is_smaller_for_the_exact_score():
    """With x_0 fixed, the exact score of q(x_t | x_0) makes GDSS's loss exactly zero."""

    class Exact(torch.nn.Module):
        def __init__(self, key, sde, target):
            super().__init__()
            self.key, self.sde, self.target, self.t = key, sde, target, None
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, adj, flags):
            return torch.zeros_like(x if self.key == "x" else adj)

    sde = VESDE(0.1, 1.0, 10)
    x = torch.zeros(2, 3, 4)
    model = GraphDiffusion(Exact("x", sde, x), Exact("adj", sde, None), sde, sde, "CNOF", 3, [0, 0.5, 0.5])
    flags = torch.ones(2, 3)
    loss_x, loss_adj = score_matching_loss(model, x, torch.zeros(2, 3, 3), flags, torch.Generator().manual_seed(0))
    # a zero score leaves ||z||^2: about 12 for X (3 x 4 entries), 6 for A (3 x 2 off-diagonal pairs, doubled)
    assert 6 < float(loss_x) < 20 and 2 < float(loss_adj) < 14


def test_train_fit_pretrains_gdss_and_the_export_samples_molecules(smiles_csv, tmp_path):
    export = tmp_path / "gdss"
    run_main("train.py", "fit", "--config", "configs/molecules/pretrain_qm9.yaml",
             "--data.init_args.path", str(smiles_csv), "--data.init_args.batch_size", "8",
             "--data.init_args.val_fraction", "0.2", "--data.init_args.test_fraction", "0.2",
             "--model.init_args.model.init_args.num_steps", "10",
             "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
             "--trainer.enable_progress_bar", "false",
             "--trainer.callbacks.init_args.directory", str(export))
    model = checkpoints.load(export)
    assert isinstance(model, GraphDiffusion) and model.num_nodes_probs is not None
    assert "val/loss" in checkpoints.metadata(export)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    with torch.inference_mode():
        result = PretrainedSampling().sample(model, lambda smiles: [float(bool(s)) for s in smiles], gens)
    assert len(result.samples) == 4 and all(isinstance(s, str) for s in result.samples)


def test_moses_config_builds_gdss_zinc_networks_and_trains_a_step(tmp_path):
    drug_like = ["CC(=O)Nc1ccc(O)cc1", "O=C(O)c1ccccc1Cl", "CN1CCN(C)CC1", "Brc1ccc(S)cc1", "FC(F)(F)c1ccncc1",
                 "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "O=[N+]([O-])c1ccccc1", "CSc1ncccn1"] * 4
    path = tmp_path / "moses.csv"
    path.write_text("SMILES\n" + "\n".join(drug_like) + "\n")
    run_main("train.py", "fit", "--config", "configs/molecules/pretrain_moses.yaml", "--data.init_args.path",
             str(path), "--data.init_args.batch_size", "4", "--data.init_args.val_fraction", "0.2",
             "--data.init_args.test_fraction", "0.2", "--trainer.fast_dev_run", "1",
             "--trainer.default_root_dir", str(tmp_path / "runs"),
             "--trainer.callbacks.init_args.directory", str(tmp_path / "export"))
