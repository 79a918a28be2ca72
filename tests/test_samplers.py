"""The samplers beyond SVDD: the posterior-sampling value, beam search, nested-IS SMC and refinement.

Exactness on the enumerable masked diffusion of tests/toys.py (3 symbols, length 3, 3 steps), whose
target exp(r / alpha) p_pre, exact soft value and every decoder's exact law are computable:

* SVDD with the posterior-sampling value has a computable law for every (M, K); it falls to the target
  as M and K grow, while SVDD-PM's (r(x0_hat)) stops at a distance from it; the samples match the law;
* nested-IS SMC samples the target, whatever its value (as SMC does);
* Metropolis refinement with pretrained re-decoding follows the computed MCMC law round by round;
* beam search with one state per sample is SVDD with M = K, and with a wide beam finds the maximiser.

Then the decoder contracts on a small DNA model, and the continuous-state models (a Gaussian-mixture
DDPM, GDSS, a diffusers UNet).
"""
from __future__ import annotations

import pytest
import torch

from svdd_lightning import (SVDD, BeamSearch, LookaheadValue, NestedIS, PosteriorMeanValue, PosteriorSamplingValue,
                            PretrainedSampling, Refinement)
from svdd_lightning.core.reward import guard
from svdd_lightning.core.run import Candidates, Run
from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion
from test_exactness import ALPHA, FAIL, PASS, chi_square_p, hotelling_p, toy, tv  # noqa: F401 (toy: the fixture)
from toys import (ExactMaskedChain, ExactValue, FirstCoordinate, GaussianMixtureDDPM, TableReward, generators,
                  make_masked_toy)


pytestmark = pytest.mark.usefixtures("inference_mode")


def law_tv(law: torch.Tensor, target: torch.Tensor) -> float:
    return 0.5 * float((law - target).abs().sum())


def posterior_mean_values(model, chain, reward) -> list[torch.Tensor]:
    """SVDD-PM's value r(x0_hat(x)) of every state at every level (the reward at the clean level)."""
    values = []
    for level in range(model.num_steps):
        x0 = model.x0_hat(chain.states, model.denoise(chain.states, level), level)
        values.append(torch.tensor(reward(model.decode(x0)), dtype=torch.float64))
    return values + [chain.soft_values(reward, ALPHA)[-1]]


# --- 1. the posterior-sampling value ---------------------------------------------------------------
def test_sampled_value_svdd_law_falls_to_the_target_and_posterior_mean_does_not(toy):
    model, chain, reward, values, target = toy
    # the computed law: K -> infinity is SVDD with the exact soft value
    huge_k = chain.sampled_value_svdd_law(reward, ALPHA, 4, 10**4, "exact")
    assert torch.allclose(huge_k, chain.svdd_law(values, ALPHA, 4), atol=1e-5)
    for draws in ("exact", "factorised"):
        over_m = [law_tv(chain.sampled_value_svdd_law(reward, ALPHA, m, 4, draws), target) for m in (2, 8, 32, 128)]
        over_k = [law_tv(chain.sampled_value_svdd_law(reward, ALPHA, 8, k, draws), target) for k in (1, 4, 16)]
        assert over_m[0] > over_m[1] > over_m[2] > over_m[3] and over_m[3] < 0.005, (draws, over_m)
        assert over_k[0] > over_k[1] > over_k[2], (draws, over_k)
    pm = posterior_mean_values(model, chain, reward)
    stuck = [law_tv(chain.svdd_law(pm, ALPHA, m), target) for m in (32, 128, 1000)]
    assert min(stuck) > 0.08  # r(x0_hat) ignores alpha: more candidates do not bring SVDD-PM to the target


@pytest.mark.parametrize("x0_steps,draws", [(1, "factorised"), (3, "exact")])
def test_svdd_with_the_sampled_value_samples_its_computed_law(toy, x0_steps, draws):
    model, chain, reward, _, _ = toy
    n, m, k = 4000, 8, 4
    decoder = SVDD(PosteriorSamplingValue(num_samples=k, x0_steps=x0_steps), num_candidates=m, alpha=ALPHA)
    assert decoder.value.alpha == ALPHA  # the value takes the decoder's alpha
    result = decoder.sample(model, reward, generators(n))
    counts = chain.counts(result.x0)
    assert chi_square_p(counts, chain.sampled_value_svdd_law(reward, ALPHA, m, k, draws)) > PASS
    assert chi_square_p(counts, chain.p_pre) < FAIL
    # one-step draws come from the denoiser output already computed; longer ones cost denoiser calls
    plain = SVDD(PosteriorMeanValue(), num_candidates=m).sample(model, reward, generators(200))
    fresh = decoder.sample(model, reward, generators(200))
    if x0_steps == 1:
        assert fresh.stats.denoiser_calls == pytest.approx(plain.stats.denoiser_calls, rel=0.1)
    else:
        assert fresh.stats.denoiser_calls > 2 * plain.stats.denoiser_calls


def test_sampled_value_alpha_zero_is_the_max_over_draws_and_counts_its_calls(toy):
    model, chain, reward, _, _ = toy
    run = Run(model, guard(reward), range(2))
    start = torch.full((2, 3), model.mask_id)
    candidates = Candidates(run, start, 0, generators=generators(2))
    draws = Candidates(run, start, 0, generators=generators(2)).x0_samples(6)
    best = torch.tensor(reward(model.decode(draws)), dtype=torch.float64).view(2, 6).max(1).values
    assert torch.equal(PosteriorSamplingValue(6, alpha=0.0)(candidates), best)
    soft = PosteriorSamplingValue(6, alpha=ALPHA).for_alpha(2.0)  # an explicit alpha wins over the decoder's
    assert soft.alpha == ALPHA and PosteriorSamplingValue(6).for_alpha(2.0).alpha == 2.0
    assert run.stats.denoiser_calls == 2 * 2  # each Candidates' prediction once; one-step draws reuse it
    assert Candidates(run, start, 0, generators=generators(2)).x0_samples(3, num_steps=5).shape == (6, 3)
    assert run.stats.denoiser_calls == 4 + 2 + 2 * 3 * 2  # 3 steps at most (the levels left): 2 more per draw
    with pytest.raises(ValueError, match="generators"):
        PosteriorSamplingValue(2)(Candidates(run, start, 0))
    for kwargs, field in (({"num_samples": 0}, "num_samples"), ({"alpha": -1.0}, "alpha"), ({"x0_steps": 0}, "x0_steps")):
        with pytest.raises(ValueError, match=f"PosteriorSamplingValue.{field}"):
            PosteriorSamplingValue(**kwargs)


# --- 2. beam search ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value,every", [("posterior_mean", 1), ("lookahead", 1), ("posterior_mean", 2)])
def test_beam_of_one_is_svdd_with_m_equal_k(toy, value, every):
    model, chain, reward, _, _ = toy
    make = {"posterior_mean": PosteriorMeanValue, "lookahead": lambda: LookaheadValue(PosteriorMeanValue(), 1)}[value]
    beam = BeamSearch(make(), beam_width=1, num_candidates=5, select_every=every).sample(model, reward, generators(300))
    svdd = SVDD(make(), num_candidates=5, alpha=0.0, select_every=every).sample(model, reward, generators(300))
    assert torch.equal(beam.x0, svdd.x0) and beam.stats == svdd.stats


def test_wide_beam_with_the_exact_hard_value_finds_the_maximiser(toy):
    model, chain, reward, _, _ = toy
    hard = chain.soft_values(reward, 0.0)
    r = chain.reward_vector(reward)
    best = chain.sequences[int(r.argmax())]
    result = BeamSearch(ExactValue(chain, hard), beam_width=8, num_candidates=16).sample(model, reward, generators(50))
    assert result.samples == [best] * 50
    # the same budget as SVDD: A x K denoiser calls per level and sample, less reused predictions
    assert result.stats.denoiser_calls <= 50 * (1 + 8 * 16 * 2)


def test_beam_keeps_distinct_states(toy):
    from svdd_lightning.core.beam import best_distinct

    x = torch.tensor([[0, 1], [0, 1], [2, 2], [0, 1], [3, 3], [1, 1]])
    values = torch.tensor([[5.0, 5.0, 4.0], [1.0, 2.0, 2.0]])
    assert best_distinct(values, x, 2).tolist() == [[0, 2], [1, 2]]  # row 0: the second 5.0 repeats the first
    assert best_distinct(values, x, 3).tolist() == [[0, 2, 1], [1, 2, 0]]


# --- 3. nested-IS SMC ------------------------------------------------------------------------------
@pytest.mark.parametrize("value,every", [("exact", 1), ("posterior_mean", 1), ("posterior_mean", 2)])
def test_nested_is_samples_the_target_whatever_its_value(toy, value, every):
    model, chain, reward, values, target = toy
    make = {"exact": lambda: ExactValue(chain, values), "posterior_mean": PosteriorMeanValue}[value]
    k, n = 30, 150  # independent populations of n particles
    decoder = NestedIS(make(), num_candidates=4, alpha=ALPHA, select_every=every)
    counts = torch.stack([chain.counts(decoder.sample(model, reward, generators(n, offset=7000 + j * n)).x0)
                          for j in range(k)])
    assert hotelling_p(counts, target) > PASS, tv(counts.sum(0), target)
    assert hotelling_p(counts, chain.p_pre) < FAIL


# --- 4. refinement --------------------------------------------------------------------------------
def test_metropolis_refinement_follows_its_mcmc_law_towards_the_target(toy):
    model, chain, reward, _, target = toy
    kernel = chain.metropolis_kernel(reward, ALPHA, level=1)
    laws = [chain.p_pre]
    for _ in range(6):
        laws.append(laws[-1] @ kernel)
    distances = [law_tv(law, target) for law in laws]
    assert all(a > b for a, b in zip(distances, distances[1:])) and distances[-1] < 0.07
    assert float((target @ kernel - target).abs().max()) < 2e-3  # the target is (nearly) stationary
    decoder = Refinement(PretrainedSampling(), rounds=3, noise_level=2 / 3, acceptance="metropolis", alpha=ALPHA)
    assert decoder.renoise_level(model.num_steps) == 1
    result = decoder.sample(model, reward, generators(6000))
    counts = chain.counts(result.x0)
    assert chi_square_p(counts, laws[3]) > PASS
    assert chi_square_p(counts, chain.p_pre) < FAIL


def test_renoising_is_exactly_reversible_for_a_consistent_denoiser():
    """A denoiser whose predictions ignore the context is the exact conditional of its (product) law: the
    re-noise / re-decode move is then p_pre-reversible to rounding and the target exactly stationary."""
    with torch.inference_mode():
        model = make_masked_toy(seed=3, logit_scale=2.0)
        model.backbone.hidden.weight.zero_()
        chain = ExactMaskedChain(model)
    reward = TableReward({s: float(i % 5) / 2 for i, s in enumerate(chain.sequences)})
    joint = chain.p_pre.unsqueeze(1) * chain.renoise_kernel(1)
    assert float((joint - joint.T).abs().max()) < 1e-6
    target = chain.target(reward, ALPHA)
    assert float((target @ chain.metropolis_kernel(reward, ALPHA, 1) - target).abs().max()) < 1e-6


def test_greedy_refinement_never_lowers_a_reward_and_counts_its_rounds(toy):
    model, chain, reward, _, _ = toy
    n = 400
    first = PretrainedSampling().sample(model, reward, generators(n))
    refined = Refinement(PretrainedSampling(), rounds=3, noise_level=1.0).sample(model, reward, generators(n))
    # round 0 is the same pretrained sample (the same generator draws first), then only improvements
    assert torch.all(refined.rewards >= first.rewards) and refined.rewards.mean() > first.rewards.mean() + 0.1
    assert refined.stats.denoiser_calls > first.stats.denoiser_calls
    with pytest.raises(ValueError, match="Refinement.acceptance"):
        Refinement(PretrainedSampling(), acceptance="always")
    with pytest.raises(ValueError, match="Refinement.noise_level"):
        Refinement(PretrainedSampling(), noise_level=0.0)


# --- decoder contracts on a small DNA model --------------------------------------------------------
@pytest.fixture(scope="module")
def dna():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = DilatedConvDenoiser(vocab_size=4, channels=16)
    return MaskedDiffusion(backbone, alphabet="ACGT", seq_len=12, num_steps=8).eval()


def gc(samples):
    return [s.count("G") + s.count("C") for s in samples]


DECODERS = {
    "svdd_sampled_value": lambda: SVDD(PosteriorSamplingValue(3), num_candidates=4, alpha=0.5),
    "beam": lambda: BeamSearch(PosteriorMeanValue(), beam_width=2, num_candidates=3),
    "beam_lookahead": lambda: BeamSearch(PosteriorMeanValue(), beam_width=2, num_candidates=2, lookahead=2),
    "beam_every_2": lambda: BeamSearch(PosteriorMeanValue(), beam_width=2, num_candidates=3, select_every=2),
    "refinement": lambda: Refinement(SVDD(PosteriorMeanValue(), 3), rounds=2, noise_level=0.5),
}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_sample_depends_only_on_its_generator_and_raises_gc(dna, name):
    full = DECODERS[name]().sample(dna, gc, generators(range(16)))
    part = DECODERS[name]().sample(dna, gc, generators(range(12, 16)))
    assert torch.equal(full.x0[12:], part.x0) and full.samples[12:] == part.samples
    base = PretrainedSampling().sample(dna, gc, generators(range(16))).rewards.mean()
    assert full.rewards.mean() > base + 1.0


def test_nested_is_is_reproducible_and_raises_gc(dna):
    a = NestedIS(PosteriorMeanValue(), num_candidates=4, alpha=0.5, ess_threshold=0.5).sample(dna, gc, generators(32))
    b = NestedIS(PosteriorMeanValue(), num_candidates=4, alpha=0.5, ess_threshold=0.5).sample(dna, gc, generators(32))
    assert torch.equal(a.x0, b.x0)
    assert a.rewards.mean() > PretrainedSampling().sample(dna, gc, generators(32)).rewards.mean() + 1.0


@pytest.mark.parametrize("make,field", [
    (lambda: BeamSearch(PosteriorMeanValue(), beam_width=0), "BeamSearch.beam_width"),
    (lambda: BeamSearch(PosteriorMeanValue(), num_candidates=0), "BeamSearch.num_candidates"),
    (lambda: BeamSearch(PosteriorMeanValue(), lookahead=-1), "BeamSearch.lookahead"),
    (lambda: NestedIS(PosteriorMeanValue(), alpha=0.0), "NestedIS.alpha"),
    (lambda: NestedIS(PosteriorMeanValue(), num_candidates=0), "NestedIS.num_candidates"),
    (lambda: NestedIS(PosteriorMeanValue(), ess_threshold=2.0), "NestedIS.ess_threshold"),
    (lambda: NestedIS(PosteriorMeanValue(), resampling="residual"), "NestedIS.resampling"),
    (lambda: Refinement(PretrainedSampling(), rounds=-1), "Refinement.rounds"),
    (lambda: Refinement(PretrainedSampling(), alpha=0.0), "Refinement.alpha"),
    (lambda: LookaheadValue(PosteriorMeanValue(), steps=-1), "LookaheadValue.steps"),
    (lambda: BeamSearch(PosteriorMeanValue(), select_every=0), "BeamSearch.select_every"),
    (lambda: NestedIS(PosteriorMeanValue(), select_every=0), "NestedIS.select_every"),
])
def test_bad_arguments_raise_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


# --- continuous-state models -----------------------------------------------------------------------
def test_continuous_model_sampled_value_and_refinement_raise_the_reward():
    model, batch = GaussianMixtureDDPM(num_steps=20), 300
    base = PretrainedSampling().sample(model, FirstCoordinate(), generators(batch)).rewards.mean()
    value = PosteriorSamplingValue(num_samples=2, x0_steps=3)
    result = SVDD(value, num_candidates=4, alpha=0.0).sample(model, FirstCoordinate(), generators(batch))
    assert result.rewards.mean() > base + 1.0
    # 4 (T - 1) + 1 for SVDD, plus 2 more denoiser calls per draw (2 draws per candidate) at levels 1 .. T - 3,
    # 1 at level T - 2 (steps are capped at the levels left), none at T - 1
    assert result.stats.denoiser_calls == batch * (4 * 19 + 1 + 4 * 2 * 2 * 17 + 4 * 2 * 1)
    refined = Refinement(PretrainedSampling(), rounds=3, noise_level=0.5).sample(model, FirstCoordinate(),
                                                                                 generators(batch))
    assert refined.rewards.mean() > base + 0.4  # measured 0.55: re-noising halfway rarely changes the mode


def test_graph_diffusion_draws_land_on_a_point_mass_and_keep_masks():
    from test_graph_diffusion import N, mixed_size_state, tiny_model

    model = tiny_model()
    targets = {"x": model.x_network.target, "adj": model.adj_network.target}

    def exact_scores(state, t):  # the exact score of a point mass at every time
        return {key: -(state[key] - comp.marginal(t)[0].view(-1, 1, 1) * targets[key])
                / comp.marginal(t)[1].view(-1, 1, 1) ** 2 for key, comp in (("x", model.x_sde), ("adj", model.adj_sde))}

    model._scores = exact_scores
    state = mixed_size_state(model)
    draws = model.x0_samples(state, exact_scores(state, torch.full((3,), model.time(1))), 1, generators(3), 2, 3)
    flags = state["flags"].repeat_interleave(2, 0)
    assert torch.equal(draws["flags"], flags)
    assert torch.allclose(draws["x"], targets["x"] * flags[..., None], atol=1e-4)
    assert torch.allclose(draws["adj"], targets["adj"] * flags[:, :, None] * flags[:, None, :], atol=1e-4)
    with pytest.raises(ValueError, match="PosteriorSamplingValue.x0_steps: GraphDiffusion draws x_0 by stochastic"):
        SVDD(PosteriorSamplingValue(2), num_candidates=2).sample(model, lambda s: [0.0] * len(s), generators(2))


def test_diffusers_draws_are_per_sample_and_counted():
    from test_images_diffusers import tiny_model

    model = tiny_model(num_steps=4)
    decoder = lambda: SVDD(PosteriorSamplingValue(2, x0_steps=2), num_candidates=2, alpha=0.0)  # noqa: E731
    brightness = lambda images: [float(i.mean()) for i in images]  # noqa: E731
    full = decoder().sample(model, brightness, generators(range(3)))
    alone = decoder().sample(model, brightness, generators(range(2, 3)))
    assert torch.allclose(full.x0["sample"][2], alone.x0["sample"][0], atol=1e-6)
    # SVDD's 2 (T - 1) + 1, plus one more step per draw (2 per candidate) at levels 1 and 2 (none at T - 1)
    assert full.stats.denoiser_calls == 3 * (2 * 3 + 1 + 2 * 2 * 2)


def test_chunked_draws_are_the_same_draws(dna):
    plain = SVDD(PosteriorSamplingValue(3), num_candidates=4, alpha=0.5).sample(dna, gc, generators(6))
    chunked = SVDD(PosteriorSamplingValue(3), num_candidates=4, alpha=0.5, chunk_size=5).sample(dna, gc, generators(6))
    assert torch.equal(plain.x0, chunked.x0) and plain.stats == chunked.stats


# --- on an accelerator (the stand-in device of tests/fake_device.py) ---------------------------------
def test_new_samplers_on_a_device_match_the_cpu(tmp_path):
    """Every sampler, its values' networks moved by the decode job (also inside refinement and look-ahead),
    gives the CPU's rows on a device whose rewards and values stay there."""
    from test_devices import assert_same_on_the_device
    from tiny_dna import build_tiny_checkpoints

    from svdd_lightning import NetworkValue, checkpoints
    from svdd_lightning.lightning.decoding import DecodingModule
    from svdd_lightning.domains.sequences.oracle import OracleReward

    paths = build_tiny_checkpoints(tmp_path)

    def build() -> DecodingModule:
        network = lambda: NetworkValue(checkpoints.load(paths["value"]))  # noqa: E731
        methods = {"svdd_ps": SVDD(PosteriorSamplingValue(2), num_candidates=2, alpha=0.5),
                   "beam": BeamSearch(LookaheadValue(network(), 1), beam_width=2, num_candidates=2),
                   "nested_is": NestedIS(PosteriorMeanValue(), num_candidates=2, alpha=0.5, ess_threshold=0.5),
                   "refinement": Refinement(SVDD(network(), 2), rounds=1, noise_level=0.5, acceptance="metropolis")}
        return DecodingModule(checkpoints.load(paths["mdlm"]), OracleReward(str(paths["reward"])), methods)

    with torch.inference_mode(False):  # the stand-in device needs plain tensors (this module's tests run in inference mode)
        assert_same_on_the_device(build)
