"""Reward adapters: weighted sums, plain functions in configs, the failure floor."""
import math

import pytest
import torch

from svdd_lightning import Reward, WeightedSum
from svdd_lightning.core.reward import FunctionReward


def gc(seqs):
    return [(s.count("G") + s.count("C")) / len(s) for s in seqs]


def length(seqs):
    return [float(len(s)) if "N" not in s else None for s in seqs]


def test_weighted_sum_combines_terms_and_propagates_failures():
    total = WeightedSum({"gc": FunctionReward(gc), "len": FunctionReward(length)}, weights={"gc": 2.0})
    values = total(["GGCC", "ATAT", "GGNN"])
    assert values[0] == pytest.approx(2.0 * 1.0 + 4.0) and values[1] == pytest.approx(4.0)
    assert math.isnan(values[2])  # a term that cannot score the sample makes it unscored
    floored = Reward(total, floor=-1.0)(["GGCC", "GGNN"])
    assert torch.equal(floored, torch.tensor([6.0, -1.0])) and total.name == "2*gc+1*len"


def test_weighted_sum_checks_its_configuration():
    with pytest.raises(ValueError, match="WeightedSum.weights names unknown rewards"):
        WeightedSum({"gc": FunctionReward(gc)}, weights={"mrl": 1.0})
    with pytest.raises(ValueError, match="at least one reward"):
        WeightedSum({})


def test_function_reward_is_buildable_from_a_config_import_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--reward", type=FunctionReward)
    config = parser.parse_args(["--reward", '{"class_path": "svdd_lightning.core.reward.FunctionReward", '
                                            '"init_args": {"function": "test_rewards.gc"}}'])
    reward = parser.instantiate_classes(config).reward
    assert reward(["GGAA"]) == [0.5] and reward.name == "gc"


def test_reward_isolates_a_sample_that_raises():
    def picky(seqs):
        if any("X" in s for s in seqs):
            raise RuntimeError("cannot score X")
        return [1.0] * len(seqs)

    reward = Reward(picky, floor=-5.0)
    scores = reward.evaluate(["AA", "XA", "CC"])
    assert scores.values.tolist() == [1.0, -5.0, 1.0]
    assert (scores.failures, scores.errors, scores.last_error) == (1, 1, "RuntimeError: cannot score X")
