"""Masked diffusion over molecule strings: decoding to molecules through a decoder, rewards with the floor
for invalid strings, and the checkpoint."""
from __future__ import annotations

import pytest
import torch

from svdd_lightning import PretrainedSampling, checkpoints
from svdd_lightning.diffusion import DilatedConvDenoiser
from svdd_lightning.domains.molecules.rewards import QED
from svdd_lightning.domains.molecules.string_diffusion import MoleculeStringDiffusion
from svdd_lightning.domains.molecules.strings import Vocabulary

from test_molecule_string_data import corpus  # noqa: F401 (a fixture)


def tiny_model(vocabulary: str, seed: int = 0) -> MoleculeStringDiffusion:
    torch.manual_seed(seed)
    size = len(Vocabulary.load(vocabulary))
    return MoleculeStringDiffusion(DilatedConvDenoiser(size, channels=8, dilations=(1, 2)), vocabulary, num_steps=4)


@pytest.mark.parametrize("representation", ["smiles", "selfies"])
def test_a_random_model_samples_molecules_that_qed_scores_with_the_floor_for_invalid(corpus, representation,
                                                                                    inference_mode):
    model = tiny_model(str(corpus / f"{representation}.json")).eval()
    result = PretrainedSampling().sample(model, QED(), [torch.Generator().manual_seed(i) for i in range(4)],
                                         reward_floor=-1.0)
    assert len(result.samples) == 4 and all(isinstance(s, str) for s in result.samples)
    for smiles, reward in zip(result.samples, result.rewards.tolist()):
        assert 0.0 <= reward <= 1.0 if smiles else reward == -1.0
    assert model.decode(model.encode(["c1ccccc1", "CCO"])) == ["c1ccccc1", "CCO"]
    if representation == "smiles":  # random SMILES tokens are mostly no molecule (SELFIES always are one)
        assert "" in result.samples
        assert model.decode(model.encode(["cccccc"])) == [""]


def test_the_checkpoint_holds_the_vocabulary(corpus, tmp_path):
    model = tiny_model(str(corpus / "smiles.json"))
    checkpoints.save(model, tmp_path / "model")
    (corpus / "smiles.json").unlink()  # the checkpoint does not need the file
    loaded = checkpoints.load(tmp_path / "model")
    assert isinstance(loaded, MoleculeStringDiffusion) and loaded.vocabulary.tokens == model.vocabulary.tokens
    assert loaded.seq_len == model.seq_len and loaded.alphabet == model.alphabet
    x = torch.randint(0, len(model.vocabulary), (2, model.seq_len))
    assert torch.equal(loaded.backbone(x, torch.zeros(2)), model.backbone(x, torch.zeros(2)))


@pytest.mark.parametrize("off_by", [-1, 1])
def test_a_backbone_of_another_vocabulary_size_is_one_line(corpus, off_by):
    vocabulary = str(corpus / "smiles.json")
    tokens = len(Vocabulary.load(vocabulary))
    with pytest.raises(ValueError, match=f"backbone: it must embed and predict the vocabulary's {tokens} tokens"):
        MoleculeStringDiffusion(DilatedConvDenoiser(tokens + off_by, channels=8), vocabulary)
