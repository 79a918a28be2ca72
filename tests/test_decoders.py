"""Decoder contracts: per-sample determinism, the reward failure policy, chunking, argument checks.

The model is a MaskedDiffusion over ACGT, length 12, 8 steps, with a randomly initialised
DilatedConvDenoiser (no training needed: these are properties of the decoders, not of the model).
"""
from __future__ import annotations

import math

import pytest
import torch

from svdd_lightning import DPS, SMC, SVDD, BestOfN, PosteriorMeanValue, PretrainedSampling
from svdd_lightning.core.reward import GuardedReward, Reward
from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion
from toys import generators

STEPS = 8


pytestmark = pytest.mark.usefixtures("inference_mode")


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = DilatedConvDenoiser(vocab_size=4, channels=16)
    return MaskedDiffusion(backbone, alphabet="ACGT", seq_len=12, num_steps=STEPS).eval()


class GCCount(Reward):
    """Number of G/C; ``relaxed`` takes DPS's probability table (N, L, 4)."""

    name = "gc"

    def __call__(self, samples):
        return [s.count("G") + s.count("C") for s in samples]

    def relaxed(self, probs: torch.Tensor) -> torch.Tensor:
        return probs[..., 1:3].sum(dim=(-1, -2))


DECODERS = {
    "pretrained": lambda: PretrainedSampling(),
    "best_of_n": lambda: BestOfN(n=4),
    "svdd_argmax": lambda: SVDD(PosteriorMeanValue(), num_candidates=4, alpha=0.0),
    "svdd_soft": lambda: SVDD(PosteriorMeanValue(), num_candidates=4, alpha=0.5),
    "dps": lambda: DPS(scale=2.0),
}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_sample_depends_only_on_its_generator(model, name):
    full = DECODERS[name]().sample(model, GCCount(), generators(range(8)))
    part = DECODERS[name]().sample(model, GCCount(), generators(range(4, 8)))
    assert torch.equal(full.x0[4:], part.x0)
    assert full.samples[4:] == part.samples
    assert torch.equal(full.rewards[4:], part.rewards)
    assert len(set(full.samples)) > 1  # the samples differ from each other
    assert all(set(s) <= set("ACGT") for s in full.samples)  # nothing left masked


def test_smc_is_reproducible_for_the_same_batch(model):
    a = SMC(PosteriorMeanValue(), alpha=0.5).sample(model, GCCount(), generators(16))
    b = SMC(PosteriorMeanValue(), alpha=0.5).sample(model, GCCount(), generators(16))
    assert torch.equal(a.x0, b.x0)


@pytest.mark.parametrize("potential", SMC.POTENTIALS)
def test_smc_potentials_raise_gc(model, potential):
    n = 64
    base = PretrainedSampling().sample(model, GCCount(), generators(n)).rewards.mean()
    smc = SMC(PosteriorMeanValue(), alpha=0.5, ess_threshold=0.5, resampling="systematic", potential=potential)
    assert smc.sample(model, GCCount(), generators(n)).rewards.mean() > base + 0.5


def test_guided_decoders_raise_gc(model):
    n = 64
    base = PretrainedSampling().sample(model, GCCount(), generators(n)).rewards.mean()
    for name in ("best_of_n", "svdd_argmax"):
        assert DECODERS[name]().sample(model, GCCount(), generators(n)).rewards.mean() > base + 1.0, name


# --- the reward failure policy ---------------------------------------------------------------------
def flaky(samples):
    """Raises on any batch holding 'AAA'; None for 'TTT', NaN for 'GG'; the G/C count otherwise."""
    out = []
    for s in samples:
        if "AAA" in s:
            raise RuntimeError(f"cannot score {s}")
        out.append(None if "TTT" in s else math.nan if "GG" in s else s.count("G") + s.count("C"))
    return out


def kind(s: str) -> str:
    return "raise" if "AAA" in s else "none" if "TTT" in s else "nan" if "GG" in s else "ok"


FLOOR = -1.0


def test_reward_failures_are_floored_and_counted(model):
    reward = GuardedReward(flaky, floor=FLOOR)
    result = PretrainedSampling().sample(model, reward, generators(96))
    kinds = [kind(s) for s in result.samples]
    assert {"raise", "none", "nan", "ok"} <= set(kinds)  # every failure mode occurs
    for s, k, r in zip(result.samples, kinds, result.rewards.tolist()):
        assert r == (FLOOR if k != "ok" else s.count("G") + s.count("C")), (s, r)
    bad = sum(k != "ok" for k in kinds)
    assert result.stats.reward_failures == bad
    assert result.reward_errors == sum(kind(s) == "raise" for s in set(result.samples)) > 0  # distinct samples once
    assert result.stats.reward_calls == 96


def test_svdd_completes_with_a_failing_reward(model):
    reward = GuardedReward(flaky, floor=FLOOR)
    n = 48
    result = SVDD(PosteriorMeanValue(), num_candidates=4).sample(model, reward, generators(n))
    assert len(result.samples) == n and torch.isfinite(result.rewards).all()
    # candidates' x0_hat and the final samples all go through the same policy and counters
    assert result.stats.reward_failures >= result.reward_errors > 0
    for s, r in zip(result.samples, result.rewards.tolist()):
        assert (r == FLOOR) == (kind(s) != "ok")
    # the floor is below every valid score, so SVDD steers away from unscorable sequences
    pretrained = PretrainedSampling().sample(model, GuardedReward(flaky, floor=FLOOR), generators(n))
    assert (result.rewards == FLOOR).sum() < (pretrained.rewards == FLOOR).sum()


def test_reward_wrapper_isolates_bad_samples():
    reward = GuardedReward(flaky, floor=-2.0)
    scores = reward.evaluate(["ACGTACGTACGT", "AAAGGGTTTCCC", "ATTTC", "AGGT", "GCGC"])
    assert scores.values.tolist() == [6.0, -2.0, -2.0, -2.0, 4.0]
    assert (scores.failures, scores.errors) == (3, 1)  # one raised, one None, one NaN
    assert not hasattr(reward, "calls") and not hasattr(reward, "failures")  # the run counts, not the wrapper
    short = GuardedReward(lambda xs: [1.0])  # wrong length: scored one by one
    assert short(["A", "C"]).tolist() == [1.0, 1.0] and short.evaluate(["A", "C"]).failures == 0
    with pytest.raises(ValueError, match="floor"):
        GuardedReward(flaky, floor=math.inf)
    with pytest.raises(TypeError, match="callable"):
        GuardedReward(3.0)


# --- chunking ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pretrained", "best_of_n", "svdd_argmax", "svdd_soft", "smc"])
def test_chunk_size_does_not_change_results(model, name):
    make = {**DECODERS, "smc": lambda chunk_size=None: SMC(PosteriorMeanValue(), alpha=0.5, chunk_size=chunk_size)}
    if name == "smc":
        plain, chunked = make["smc"](), make["smc"](chunk_size=5)
    else:
        plain, chunked = DECODERS[name](), DECODERS[name]()
        chunked.chunk_size = 5
    a = plain.sample(model, GCCount(), generators(12))
    b = chunked.sample(model, GCCount(), generators(12))
    assert torch.equal(a.x0, b.x0) and torch.equal(a.rewards, b.rewards)
    assert a.stats == b.stats


def test_chunk_size_is_passed_through_constructors():
    assert BestOfN(n=2, chunk_size=3).chunk_size == 3
    assert SVDD(PosteriorMeanValue(), chunk_size=3).chunk_size == 3
    assert SMC(PosteriorMeanValue(), chunk_size=3).chunk_size == 3
    assert PretrainedSampling(chunk_size=3).chunk_size == 3


# --- argument checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("make,field", [
    (lambda: SVDD(PosteriorMeanValue(), num_candidates=0), "num_candidates"),
    (lambda: SVDD(PosteriorMeanValue(), alpha=-0.1), "alpha"),
    (lambda: SMC(PosteriorMeanValue(), alpha=0.0), "alpha"),
    (lambda: SMC(PosteriorMeanValue(), alpha=-1.0), "alpha"),
    (lambda: SMC(PosteriorMeanValue(), ess_threshold=0.0), "ess_threshold"),
    (lambda: SMC(PosteriorMeanValue(), ess_threshold=1.5), "ess_threshold"),
    (lambda: SMC(PosteriorMeanValue(), potential="product"), "SMC.potential"),
    (lambda: BestOfN(n=0), "BestOfN.n"),
    (lambda: PretrainedSampling(chunk_size=0), "chunk_size"),
    (lambda: SVDD(PosteriorMeanValue(), chunk_size=-2), "chunk_size"),
])
def test_bad_arguments_raise_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_unknown_resampling_scheme_is_rejected_at_construction():
    with pytest.raises(ValueError, match="SMC.resampling"):
        SMC(PosteriorMeanValue(), resampling="residual")


def test_identical_samples_in_one_call_are_scored_once(model):
    """SVDD-PM's candidates that unmasked nothing share their x0_hat: the reward sees each once."""
    seen = []

    def reward(samples):
        seen.extend(samples)
        return GCCount()(samples)

    m = 6
    result = SVDD(PosteriorMeanValue(), num_candidates=m).sample(model, reward, generators(4))
    per_sample = result.stats.per_sample(4)["reward_calls"]
    assert len(seen) == result.stats.reward_calls  # counts are calls the reward really served
    assert per_sample < m * STEPS + 1  # some candidates shared their x0_hat
    # a reward without the counting wrapper gives the same designs and rewards
    again = SVDD(PosteriorMeanValue(), num_candidates=m).sample(model, GCCount(), generators(4))
    assert again.samples == result.samples and torch.equal(again.rewards, result.rewards)
