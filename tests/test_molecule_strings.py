"""Molecule strings: SMILES and SELFIES tokenisation, the vocabulary's encoding, decoding, JSON and the
shipped MOSES vocabularies."""
from __future__ import annotations

import pytest
import torch

from svdd_lightning.domains.molecules.strings import PADDING, Vocabulary, selfies_tokens, smiles_tokens

CORPUS = ["CC(=O)Nc1ccc(Cl)cc1", "C[C@@H](Br)c1ccc[nH]1", "OC1CC2CC3CC4CC5CC6CC7CC8CC9CC%10CC1C2C3C4C5C6C7C8C9%10"]


def test_smiles_tokens_keep_multi_character_atoms_and_ring_numbers_whole():
    assert smiles_tokens("C[C@@H](Br)c1ccc[nH]1") == ["C", "[C@@H]", "(", "Br", ")", "c", "1", "c", "c", "c",
                                                      "[nH]", "1"]
    assert smiles_tokens("C%10CCl")[1:] == ["%10", "C", "Cl"]
    with pytest.raises(ValueError, match="outside the SMILES token pattern"):
        smiles_tokens("CC&C")


def test_selfies_tokens_are_the_library_symbols():
    assert selfies_tokens("CCl") == ["[C]", "[Cl]"]
    assert "".join(selfies_tokens("c1ccccc1")).count("[Ring1]") == 1


@pytest.mark.parametrize("representation", ["smiles", "selfies"])
def test_encode_pads_and_decode_gives_canonical_smiles_or_none(representation, tmp_path):
    vocab = Vocabulary.build(CORPUS, representation)
    assert vocab.tokens[0] == PADDING and vocab.max_length == vocab.statistics["length_percentiles"]["100"]
    assert vocab.statistics["molecules"] == 3 and vocab.statistics["num_tokens"] == len(vocab)
    ids = vocab.encode(CORPUS[:2])
    assert ids.shape == (2, vocab.max_length) and (ids[:, -1] == 0).all()
    assert vocab.decode(ids) == ["CC(=O)Nc1ccc(Cl)cc1", "C[C@@H](Br)c1ccc[nH]1"]
    # a padding token inside a row is dropped, and an empty row is no molecule
    assert vocab.decode(torch.zeros((1, vocab.max_length), dtype=torch.long)) == [None]
    vocab.save(tmp_path / "vocab.json")
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert again.tokens == vocab.tokens and again.to_dict() == vocab.to_dict()
    assert len(vocab.alphabet) == len(set(vocab.alphabet)) == len(vocab)


def test_an_unparsable_or_masked_smiles_row_decodes_to_none():
    vocab = Vocabulary.build(CORPUS, "smiles")
    ids = torch.tensor([[vocab.ids["C"], vocab.ids["("], vocab.ids["1"]] + [0] * (vocab.max_length - 3)])
    assert vocab.decode(ids) == [None]
    masked = vocab.encode(["CCO"])
    masked[0, 1] = len(vocab)  # the [MASK] id of a masked diffusion model
    assert vocab.decode(masked) == [None]


def test_encode_names_an_unknown_token_and_a_too_long_molecule():
    vocab = Vocabulary.build(CORPUS[:2], "smiles")
    with pytest.raises(ValueError, match=r"molecule 1 \(CCF\) has tokens \['F'\] outside the vocabulary"):
        vocab.encode(["CC", "CCF"])
    with pytest.raises(ValueError, match="more than the vocabulary's max_length"):
        vocab.encode(["C" * (vocab.max_length + 1)])
    with pytest.raises(ValueError, match="representation must be one of smiles, selfies"):
        Vocabulary.build(CORPUS, "inchi")
    with pytest.raises(ValueError, match="lacks the fields"):
        Vocabulary.from_dict({"tokens": [PADDING]})


@pytest.mark.parametrize("representation", ["smiles", "selfies"])
def test_the_shipped_moses_vocabularies_read_moses_molecules(representation):
    vocab = Vocabulary.load(f"assets/molecules/moses_{representation}_vocab.json")
    assert vocab.representation == representation and vocab.statistics["molecules"] == 1584663
    smiles = "CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1"  # the first MOSES train molecule
    assert vocab.decode(vocab.encode([smiles])) == [smiles]
