"""The models shipped in checkpoints/: they load safely and SVDD-PM improves on pretrained sampling."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from svdd_lightning import SVDD, BestOfN, PosteriorMeanValue, PretrainedSampling, checkpoints
from svdd_lightning.diffusion import MaskedDiffusion
from svdd_lightning.domains.sequences.oracle import OracleReward
from svdd_lightning.sample_files import read_fasta

ROOT = Path(__file__).resolve().parents[1]
MDLM, REWARD, EVAL, VALUE = (ROOT / "checkpoints/dna" / name
                             for name in ("mdlm", "oracle_reward", "oracle_eval", "value_mc"))


def generators(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(1000 + offset + i) for i in range(n)]


@pytest.mark.parametrize("path, metric", [(MDLM, "val/nelbo_bpt"), (REWARD, "val/auroc"), (EVAL, "val/auroc"),
                                          (VALUE, "val/mse")])
def test_shipped_checkpoints_are_safetensors_with_their_training_record(path, metric):
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    module = checkpoints.load(path)
    assert not module.training
    record = checkpoints.metadata(path)
    assert metric in record and record["train_seconds"] > 0


def test_shipped_model_samples_dna_of_the_right_length():
    model = checkpoints.load(MDLM)
    assert isinstance(model, MaskedDiffusion) and model.num_steps == 128 and model.seq_len == 200
    with torch.inference_mode():
        samples = PretrainedSampling().sample(model, lambda s: [0.0] * len(s), generators(4)).samples
    assert all(len(s) == 200 and set(s) <= set("ACGT") for s in samples)


def test_svdd_pm_raises_the_median_reward_of_the_shipped_model():
    model, reward = checkpoints.load(MDLM), OracleReward(str(REWARD))
    with torch.inference_mode():
        pretrained = PretrainedSampling().sample(model, reward, generators(8)).rewards
        svdd = SVDD(PosteriorMeanValue(), num_candidates=4).sample(model, reward, generators(8)).rewards
    assert svdd.median() > pretrained.median() + 1.0, (svdd.median(), pretrained.median())


@pytest.mark.slow
def test_shipped_task_ordering_svdd_over_best_of_n_over_pretrained():
    """The issue's claim on a 64-sample run: SVDD-PM > Best-of-N > pretrained on the median reward
    and on the evaluation oracle."""
    model, reward = checkpoints.load(MDLM), OracleReward(str(REWARD))
    evaluation = OracleReward(str(EVAL), output="sigmoid")
    medians = {}
    with torch.inference_mode():
        for name, decoder in [("pretrained", PretrainedSampling()), ("best_of_n", BestOfN(11)),
                              ("svdd", SVDD(PosteriorMeanValue(), num_candidates=10))]:
            result = decoder.sample(model, reward, generators(64, offset=5000))
            medians[name] = (float(result.rewards.median()), float(torch.tensor(evaluation(result.samples)).median()))
    for k in range(2):
        assert medians["svdd"][k] > medians["best_of_n"][k] > medians["pretrained"][k], medians


# --- the 5'UTR models -------------------------------------------------------------------------------
UTR = ROOT / "checkpoints/utr"


@pytest.mark.parametrize("name, metric", [("mdlm", "val/nelbo_bpt"), ("oracle_mrl", "val/pearson"),
                                          ("value_mc_mrl", "val/mse"), ("value_mc_stability", "val/mse")])
def test_shipped_utr_checkpoints_load_with_their_training_record(name, metric):
    test_shipped_checkpoints_are_safetensors_with_their_training_record(UTR / name, metric)


def test_shipped_mrl_oracle_tracks_measured_mrl_on_held_out_genes():
    from torchmetrics.functional import pearson_corrcoef

    headers = [line for line in gzip.open(ROOT / "assets/utr/test_utrs.fasta.gz", "rt") if line.startswith(">")]
    measured = torch.tensor([float(h.split("mrl=")[1]) for h in headers])
    predicted = torch.tensor(OracleReward(str(UTR / "oracle_mrl"))(read_fasta(ROOT / "assets/utr/test_utrs.fasta.gz")))
    assert float(pearson_corrcoef(predicted, measured)) > 0.6


def test_svdd_pm_raises_the_stability_of_shipped_utr_designs():
    from svdd_lightning.domains.utr.rewards import MinimumFreeEnergy

    model, reward = checkpoints.load(UTR / "mdlm"), MinimumFreeEnergy()
    with torch.inference_mode():
        pretrained = PretrainedSampling().sample(model, reward, generators(8)).samples
        svdd = SVDD(PosteriorMeanValue(), num_candidates=4).sample(model, reward, generators(8)).samples
    assert all(len(s) == 50 and set(s) <= set("ACGU") for s in pretrained + svdd)
    assert torch.tensor(reward(svdd)).median() > torch.tensor(reward(pretrained)).median() + 3.0


# --- the QM9 graph diffusion model --------------------------------------------------------------------
def test_shipped_gdss_model_samples_mostly_valid_molecules():
    from svdd_lightning.domains.molecules.graph_diffusion import GraphDiffusion
    from svdd_lightning.domains.molecules.rewards import validity

    path = ROOT / "checkpoints/molecules/gdss_qm9"
    test_shipped_checkpoints_are_safetensors_with_their_training_record(path, "val/loss")
    model = checkpoints.load(path)
    assert isinstance(model, GraphDiffusion) and model.num_nodes_probs is not None
    with torch.inference_mode():
        smiles = PretrainedSampling().sample(model, lambda s: [0.0] * len(s), generators(16)).samples
    assert validity(smiles) >= 0.75, smiles  # 97.3% over 1,000 samples (benchmarks/results)


def test_shipped_moses_model_samples_valid_distinct_drug_sized_molecules():
    from rdkit import Chem

    from svdd_lightning.domains.molecules.string_diffusion import MoleculeStringDiffusion
    from svdd_lightning.domains.molecules.rewards import validity

    path = ROOT / "checkpoints/molecules/mdlm_moses"
    test_shipped_checkpoints_are_safetensors_with_their_training_record(path, "val/nelbo_bpt")
    model = checkpoints.load(path, overrides={"num_steps": 32})
    assert isinstance(model, MoleculeStringDiffusion) and model.vocabulary.representation == "selfies"
    with torch.inference_mode():
        smiles = PretrainedSampling().sample(model, lambda s: [0.0] * len(s), generators(32)).samples
    assert validity(smiles) == 1.0 and len(set(smiles)) == len(smiles), smiles  # SELFIES decode to molecules
    heavy = sorted(Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles)
    assert 8 <= heavy[len(heavy) // 2] <= 30, heavy  # MOSES: 8-27 heavy atoms


# --- the MNIST rectified flow -------------------------------------------------------------------------
def test_shipped_mnist_flow_samples_digits_the_classifier_recognises():
    from svdd_lightning.domains.images.pixel_flow import PixelFlow
    from svdd_lightning.domains.images.rewards import ClassifierConfidence

    path = ROOT / "checkpoints/images/flow_mnist"
    test_shipped_checkpoints_are_safetensors_with_their_training_record(path, "val/loss")
    model = checkpoints.load(path)
    assert isinstance(model, PixelFlow) and model.noise_level == 0.7 and model.num_steps == 50
    confidence = ClassifierConfidence(ROOT / "checkpoints/images/classifier_mnist")
    with torch.inference_mode():
        result = PretrainedSampling().sample(model, confidence, generators(16))
    assert result.stats.denoiser_calls == 16 * 50
    # 74.2% of 1,000 samples are classified with confidence > 0.9 (benchmarks/results/image_model_quality.json)
    assert sum(float(r) > 0.9 for r in result.rewards) >= 8


# --- the fine-tuned DNA model -------------------------------------------------------------------------
def test_shipped_finetuned_dna_model_samples_higher_reward_at_one_x():
    path = ROOT / "checkpoints/dna/mdlm_finetuned"
    test_shipped_checkpoints_are_safetensors_with_their_training_record(path, "val/loss")
    assert checkpoints.metadata(path)["finetuning"]["samples"]["method"] == "svdd_ps"
    finetuned, pretrained = checkpoints.load(path), checkpoints.load(MDLM)
    reward = OracleReward(str(REWARD), output="raw")
    with torch.inference_mode():
        tuned = PretrainedSampling().sample(finetuned, reward, generators(32)).rewards
        base = PretrainedSampling().sample(pretrained, reward, generators(32)).rewards
    # medians over 128 designs: 3.90 against -3.00 (benchmarks/results/finetune_dna_ps_long_cpu.json)
    assert float(torch.as_tensor(tuned).median()) > float(torch.as_tensor(base).median()) + 2
