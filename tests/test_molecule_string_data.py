"""The molecule strings DataModule: padded token batches, a seeded split, one-line errors."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from svdd_lightning.domains.molecules.string_data import MoleculeStringsDataModule
from svdd_lightning.domains.molecules.strings import Vocabulary

MOLECULES = ["CCO", "CC(=O)O", "c1ccccc1", "CCN(CC)CC", "Cc1ccc(Cl)cc1", "OC(=O)c1ccccc1", "CC(C)Br", "C1CCNCC1",
             "CCOC(=O)C", "Nc1ccccc1", "CC#N", "O=C1CCCCC1"] * 4


@pytest.fixture
def corpus(tmp_path):
    """A SMILES CSV and the SMILES and SELFIES vocabularies of its molecules."""
    pd.DataFrame({"SMILES": MOLECULES}).to_csv(tmp_path / "train.csv.gz", index=False)
    for representation in ("smiles", "selfies"):
        Vocabulary.build(MOLECULES, representation).save(tmp_path / f"{representation}.json")
    return tmp_path


@pytest.mark.parametrize("representation", ["smiles", "selfies"])
def test_datamodule_batches_are_padded_tokens_with_a_seeded_split(corpus, representation):
    vocab = str(corpus / f"{representation}.json")
    data = MoleculeStringsDataModule(str(corpus / "train.csv.gz"), vocab, representation, val_fraction=0.3,
                                     batch_size=4)
    data.setup("fit")
    tokens, labels = next(iter(data.train_dataloader()))
    assert tokens.shape == (4, Vocabulary.load(vocab).max_length) and tokens.dtype == torch.long
    assert labels.shape == (4,)
    train, val = data.smiles["train"], data.smiles["validation"]
    assert len(train) + len(val) == len(MOLECULES) and not set(train) & set(val) and val
    again = MoleculeStringsDataModule(str(corpus / "train.csv.gz"), vocab, representation, val_fraction=0.3)
    again.setup("fit")
    assert again.smiles == data.smiles
    few = MoleculeStringsDataModule(str(corpus / "train.csv.gz"), vocab, representation, max_molecules=10,
                                    val_fraction=0.3)
    few.setup("fit")
    assert sum(len(s) for s in few.smiles.values()) == 10
    with pytest.raises(ValueError, match="no test split"):
        data.test_dataloader()


def test_datamodule_names_a_vocabulary_of_the_other_representation(corpus):
    data = MoleculeStringsDataModule(str(corpus / "train.csv.gz"), str(corpus / "selfies.json"), "smiles")
    with pytest.raises(ValueError, match="data.representation: 'smiles', but the vocabulary"):
        data.setup("fit")
    with pytest.raises(ValueError, match="data.val_fraction"):
        MoleculeStringsDataModule(str(corpus / "train.csv.gz"), str(corpus / "smiles.json"), val_fraction=0.0)
