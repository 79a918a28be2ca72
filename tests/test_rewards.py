"""The reward contract (one base class with declared capabilities, or a plain function), its adapters
(weighted sums, plain functions in configs) and the run's failure floor."""
import math

import pytest
import torch

from svdd_lightning import ProxyGuided, Reward, WeightedSum
from svdd_lightning.core.reward import FunctionReward, GuardedReward, guard


def gc(seqs):
    return [(s.count("G") + s.count("C")) / len(s) for s in seqs]


def length(seqs):
    return [float(len(s)) if "N" not in s else None for s in seqs]


def test_weighted_sum_combines_terms_and_propagates_failures():
    total = WeightedSum({"gc": FunctionReward(gc), "len": FunctionReward(length)}, weights={"gc": 2.0})
    values = total(["GGCC", "ATAT", "GGNN"])
    assert values[0] == pytest.approx(2.0 * 1.0 + 4.0) and values[1] == pytest.approx(4.0)
    assert math.isnan(values[2])  # a term that cannot score the sample makes it unscored
    floored = GuardedReward(total, floor=-1.0)(["GGCC", "GGNN"])
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

    reward = GuardedReward(picky, floor=-5.0)
    scores = reward.evaluate(["AA", "XA", "CC"])
    assert scores.values.tolist() == [1.0, -5.0, 1.0]
    assert (scores.failures, scores.errors, scores.last_error) == (1, 1, "RuntimeError: cannot score X")


class Plain(Reward):
    def __call__(self, samples):
        return [1.0] * len(samples)


class Capable(Plain):
    def score_states(self, model, x0):
        return torch.ones(len(x0))

    def submit(self, samples):
        return lambda: self(samples)

    def relaxed(self, x):
        return x.sum(dim=-1)


def test_capabilities_are_declared_methods_with_defaults():
    plain, capable = Plain(), Capable()
    assert (plain.reads_states, plain.scores_in_background, plain.differentiable) == (False, False, False)
    assert (capable.reads_states, capable.scores_in_background, capable.differentiable) == (True, True, True)
    assert plain.score_states(None, [1]) is None and plain.submit(["a"]) is None and plain.to("cpu") is plain
    plain.check_model(object())  # the default accepts every model
    with pytest.raises(TypeError, match="not differentiable: it has no relaxed"):
        guard(plain).relaxed()
    # adapters pass their parts' capabilities on
    assert WeightedSum({"a": capable, "b": plain}).reads_states is False
    assert WeightedSum({"a": capable, "b": Capable()}).reads_states is True
    proxy = ProxyGuided(plain, torch.nn.Linear(1, 1))
    assert proxy.differentiable and not proxy.reads_states and not proxy.scores_in_background
    assert ProxyGuided(capable, torch.nn.Linear(1, 1)).scores_in_background


def test_a_plain_function_is_wrapped_with_its_name():
    guarded = guard(gc, floor=-1.0)
    assert isinstance(guarded.fn, FunctionReward) and guarded.name == "gc" and guarded.unit is None
    assert guarded(["GGCC", ""]).tolist() == [1.0, -1.0]  # len 0 raises ZeroDivisionError: floored
    with pytest.raises(TypeError, match="expected a Reward or a batched callable"):
        GuardedReward(3.0)


def test_a_renamed_name_gets_one_line_naming_the_new_one(tmp_path):
    with pytest.raises(ImportError, match="svdd_lightning.RewardFunction is now svdd_lightning.Reward"):
        from svdd_lightning import RewardFunction  # noqa: F401
    from svdd_lightning.lightning.cli import main_decode

    old = tmp_path / "old.yaml"
    old.write_text("model:\n  reward:\n    class_path: svdd_lightning.core.reward.RewardFunction\n")
    with pytest.raises(SystemExit) as stop:
        main_decode(["predict", "--config", "configs/dna/compare.yaml", "--config", str(old)])
    assert str(stop.value).startswith(f"error: {old}: svdd_lightning.core.reward.RewardFunction is now "
                                      f"svdd_lightning.core.reward.Reward")
