"""The models shipped in checkpoints/: they load safely and SVDD-PM improves on pretrained sampling."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svdd_lightning import SVDD, BestOfN, PosteriorMeanValue, PretrainedSampling, checkpoints
from svdd_lightning.diffusion import MaskedDiffusion
from svdd_lightning.oracle_reward import OracleReward

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
