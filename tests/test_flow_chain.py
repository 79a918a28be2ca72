"""Exactness on a continuous problem with a known answer: a 2-D Gaussian mixture.

Data p = 0.5 N((-2, 0), 0.4^2 I) + 0.3 N((2, 0), .) + 0.2 N((0, 2.5), .). Two chains sample it with their
exact networks (tests/toys.py): :class:`GaussianMixtureFlow`, a :class:`RectifiedFlow` with the exact velocity
E[eps - x_0 | x_t] of x_t = (1 - t) x_0 + t eps, and :class:`GaussianMixtureDDPM` with the exact noise
prediction. Reward r(x) = w.x, w = (1, 0.5), alpha = 1: the target exp(r / alpha) p is the mixture with means
mu_j + sigma0^2 w / alpha and weights proportional to w_j exp(w.mu_j / alpha + sigma0^2 |w|^2 / (2 alpha^2))
(0.023, 0.743, 0.234), and the soft value v_k(x) = alpha log E[exp(r(x_0) / alpha) | x_k] is closed-form
(:class:`MixtureSoftValue`).

Every bar is 4 standard errors (Z below), each stated where it is used; the components are 8 sigma0 apart, so
assigning a sample to its most likely component misassigns it with probability below 1e-4. The guided
decoders run the flow at noise level a = sqrt(2), where its SDE is the time reversal of the interpolant's
noising, so that the chain's x_0 given x_t is the interpolant's posterior that the closed-form value and
the Metropolis refinement assume.
"""
from __future__ import annotations

import math

import pytest
import torch

from svdd_lightning import (SMC, SVDD, BeamSearch, NestedIS, PosteriorMeanValue, PosteriorSamplingValue,
                            PretrainedSampling, Refinement)
from svdd_lightning.diffusion import RectifiedFlow
from svdd_lightning.diffusion.flow import flow_times
from toys import (GaussianMixtureDDPM, GaussianMixtureFlow, LinearReward, MixtureSoftValue, generators,
                  tilted_mixture)

W, ALPHA = (1.0, 0.5), 1.0
Z = 4.0  # standard errors of every bar
SQRT2 = math.sqrt(2)

pytestmark = pytest.mark.usefixtures("inference_mode")


def law(model, tilted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, weights) of the model's data mixture p, or of the tilted target exp(r / alpha) p."""
    means, weights = model.means, model.log_weights.exp()
    return tilted_mixture(means, weights, model.sigma0, torch.tensor(W, dtype=torch.float64), ALPHA) if tilted \
        else (means, weights)


def components(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, sigma0: float) -> torch.Tensor:
    """Each sample's most likely component."""
    return (weights.log() - ((x.unsqueeze(1) - means) ** 2).sum(-1) / (2 * sigma0 ** 2)).argmax(1)


def mixture_z(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, sigma0: float) -> torch.Tensor:
    """z-scores (3, 6) of i.i.d. samples against sum_j w_j N(mu_j, sigma0^2 I), per component j: the fraction of
    samples assigned to j (SE sqrt(w_j (1 - w_j) / n)), the component's mean per coordinate (SE
    sigma0 / sqrt(n_j)), its two variances (SE sigma0^2 sqrt(2 / (n_j - 1))) and its covariance (SE
    sigma0^2 / sqrt(n_j - 1)). The (co)variances of a component with fewer than 100 samples score 0: their
    normal approximation is poor there (the variance's law is a skewed chi-square)."""
    comp, n, z = components(x, means, weights, sigma0), len(x), []
    for j, w in enumerate(weights.tolist()):
        xj = x[comp == j]
        nj = len(xj)
        cov = torch.cov(xj.T) if nj >= 100 else torch.eye(2, dtype=x.dtype) * sigma0 ** 2
        z += [(nj / n - w) / math.sqrt(w * (1 - w) / n), *((xj.mean(0) - means[j]) / (sigma0 / math.sqrt(nj))),
              *((cov.diagonal() - sigma0 ** 2) / (sigma0 ** 2 * math.sqrt(2 / (nj - 1)))),
              cov[0, 1] / (sigma0 ** 2 / math.sqrt(nj - 1))]
    return torch.tensor([float(v) for v in z]).view(3, 6)


def population_z(x: torch.Tensor, model, populations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(error, z) of the component fractions and the mean of SMC's samples against the target. Sample i is in
    population i % populations; particles of one population are dependent (resampling copies them), so the
    standard error is the spread of the per-population estimates over the independent populations / sqrt(R),
    floored at the SE of as many i.i.d. samples (resampling's copies only add variance; the floor keeps a rare
    component that no population holds from a zero SE)."""
    means, weights = law(model, tilted=True)
    mean = weights @ means
    target = torch.cat([weights, mean])
    var = torch.cat([weights * (1 - weights), weights @ (means ** 2 + model.sigma0 ** 2) - mean ** 2])
    onehot = torch.nn.functional.one_hot(components(x, means, weights, model.sigma0), 3).double()
    per_population = torch.cat([onehot, x], 1).view(-1, populations, 5).mean(0)  # (R, 5)
    error = per_population.mean(0) - target
    se = torch.maximum(per_population.std(0) / math.sqrt(populations), (var / len(x)).sqrt())
    return error, error / se


def mean_reward(model, tilted: bool) -> float:
    means, weights = law(model, tilted)
    return float(weights @ (means @ torch.tensor(W, dtype=torch.float64)))


# --- the chain and its exact velocity ---------------------------------------------------------------------
def test_the_velocity_and_the_soft_value_are_exact():
    """v(x, t) = -(x + t grad log p_t(x)) / (1 - t) for the noised mixture p_t (from x_t = (1 - t) E[x_0 | x_t]
    + t E[eps | x_t] and E[eps | x_t] = -t grad log p_t); at t = 1 the soft value is alpha log E_p[exp(r / alpha)],
    the log-normaliser of the tilted mixture."""
    model = GaussianMixtureFlow(num_steps=10)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for level in (1, 4, 9):
        t = model.time(level)
        var = (1 - t) ** 2 * model.sigma0 ** 2 + t ** 2
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            log_p = torch.logsumexp(model.log_weights - ((xg.unsqueeze(1) - (1 - t) * model.means) ** 2).sum(-1)
                                    / (2 * var), dim=1)
            (score,) = torch.autograd.grad(log_p.sum(), xg)
        assert torch.allclose(model.denoise(x, level), -(x + t * score) / (1 - t), atol=1e-10)
    from svdd_lightning.core.run import Candidates, Run
    from svdd_lightning.core.reward import guard

    run = Run(model, guard(LinearReward(W), 0.0), range(4))
    values = MixtureSoftValue(W, ALPHA)(Candidates(run, x[:4], 0))
    w = torch.tensor(W, dtype=torch.float64)
    log_z = torch.logsumexp(model.log_weights + model.means @ w / ALPHA + model.sigma0 ** 2 * (w @ w) / (2 * ALPHA ** 2), 0)
    assert torch.allclose(values, ALPHA * log_z.expand(4), atol=1e-12)


def test_the_chain_steps_on_the_shifted_grid():
    """The grid is SD3's shift of uniform times; the ODE step is Euler's, the last step is x0_hat, one x_0 draw
    is x0_hat and two are SDE rollouts from the rows' own generators; the ODE x_0 estimate, the forward
    process and DPS at scale 0 follow the interpolant."""
    t = torch.linspace(1, 0, 5, dtype=torch.float64)
    assert torch.allclose(flow_times(4, 3.0), 3 * t / (1 + 2 * t)) and torch.equal(flow_times(4), t)
    model = GaussianMixtureFlow(num_steps=4, noise_level=0.0, shift=3.0)
    x = model.initial_state(generators(2))
    assert x.dtype == torch.float64 and torch.equal(x[1], torch.randn(2, generator=generators([1])[0], dtype=torch.float64))
    v = model.denoise(x, 1)
    ode = model.propose(x, v, 1, generators(2), 3)
    assert torch.equal(ode[0], ode[2]) and torch.allclose(ode[0], x[0] - (model.times[1] - model.times[2]) * v[0])
    assert torch.allclose(model.propose(x, v, 3, generators(2), 1), x - model.times[3] * v)
    model.noise_level = 0.7
    sde = model.propose(x, v, 1, generators(2), 3)
    assert not torch.equal(sde[0], sde[1]) and torch.equal(sde, model.propose(x, v, 1, generators(2), 3))
    assert torch.allclose(model.x0_samples(x, v, 1, generators(2), 2, 1)[::2], model.x0_hat(x, v, 1))
    two = model.x0_samples(x, v, 1, generators(2), 2, 2)
    assert not torch.equal(two[0], two[1]) and torch.equal(two, model.x0_samples(x, v, 1, generators(2), 2, 2))
    one = model.x0_estimate(x, v, 1, 1)
    assert torch.allclose(one, model.x0_hat(x, v, 1))
    mid = x - (model.times[1] / 2) * v  # two equal Euler steps, the second to x0_hat
    assert torch.allclose(model.x0_estimate(x, v, 1, 2), mid - model.times[1] / 2 * model.velocity_at(mid, model.times[1] / 2))
    noise = torch.stack([torch.randn(2, generator=g, dtype=torch.float64) for g in generators([7, 8])])
    assert torch.allclose(model.forward_noise(x, 2, generators([7, 8])), (1 - model.times[2]) * x + model.times[2] * noise)
    assert model.forward_noise(x, 4, generators(2)) is x
    with torch.inference_mode(False), torch.enable_grad():  # as DPS calls it, on tensors made for autograd
        model, reward = GaussianMixtureFlow(num_steps=4, shift=3.0), LinearReward(W)
        unguided, guided = (model.guided_prediction(x.clone(), 1, reward.relaxed, scale) for scale in (0.0, 0.5))
    assert torch.allclose(unguided, v)
    assert (reward.relaxed(model.x0_hat(x, guided, 1)) > reward.relaxed(model.x0_hat(x, v, 1))).all()
    assert model.time(0) == 1 and model.time(4) == 0 and len(model.decode(x)) == 2


# --- pretrained sampling reproduces p ---------------------------------------------------------------------
# (chain, samples); the discretisation errors measured with 60,000 samples, in SE of the samples here:
CHAINS = {
    # the ODE's Euler error shrinks like 1 / T: at T = 200 a component mean is off by up to 0.015 (1.3 SE)
    "flow_ode": (lambda: GaussianMixtureFlow(num_steps=200, noise_level=0.0), 6000),
    "flow_sde": (lambda: GaussianMixtureFlow(num_steps=100, noise_level=0.7), 4000),
    "flow_sqrt2": (lambda: GaussianMixtureFlow(num_steps=50, noise_level=SQRT2), 3000),
    # DDPM's posterior-variance steps are too narrow: the components' std 0.388 instead of 0.4 (1.3 SE)
    "ddpm": (lambda: GaussianMixtureDDPM(num_steps=200, beta_end=0.05), 2000),
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_pretrained_sampling_reproduces_the_mixture(chain):
    """Every component weight, mean, variance and covariance within 4 SE of p's (mixture_z); the same
    statistics put the target exp(r / alpha) p beyond 4 SE (the test has teeth)."""
    make, n = CHAINS[chain]
    model = make()
    x = PretrainedSampling().sample(model, LinearReward(W), generators(n, offset=1)).x0
    z = mixture_z(x, *law(model, tilted=False), model.sigma0)
    assert z.abs().max() < Z, z
    assert mixture_z(x, *law(model, tilted=True), model.sigma0).abs().max() > Z


def test_the_ddpm_chain_of_the_other_tests_is_too_narrow():
    """GaussianMixtureDDPM at T = 50 (tests/test_continuous_toy.py) under-disperses: its posterior-variance steps
    leave the components' standard deviations about 8% short; weights and means stay within 4 SE."""
    model = GaussianMixtureDDPM(num_steps=50)
    x = PretrainedSampling().sample(model, LinearReward(W), generators(4000, offset=1)).x0
    z = mixture_z(x, *law(model, tilted=False), model.sigma0)
    assert z[:, :3].abs().max() < Z and (z[:, 3:5] < -Z).any(), z


# --- guided decoders approach exp(r / alpha) p ------------------------------------------------------------
SMC_CHAINS = {
    "flow": lambda populations: GaussianMixtureFlow(num_steps=50, noise_level=SQRT2, num_conditions=populations),
    "ddpm": lambda populations: GaussianMixtureDDPM(num_steps=50, num_conditions=populations),
}


@pytest.mark.parametrize("chain", list(SMC_CHAINS))
def test_smc_with_the_exact_value_approaches_the_target_as_the_population_grows(chain):
    """Component fractions and mean of SMC's samples (population_z: SE from the spread over R independent
    populations): with 2 particles per population (256 populations) some is beyond 4 SE of the target
    (resampling among 2 barely tilts), with 64 (64 populations) every one is within 4 SE and the error of the
    mean is smaller. The DDPM is the T = 50 chain of tests/test_continuous_toy.py (its narrowness, below, moves
    the target's mean by 0.03, about half an SE here)."""
    errors = {}
    for particles, populations in ((2, 256), (64, 64)):
        model = SMC_CHAINS[chain](populations)
        decoder = SMC(MixtureSoftValue(W, ALPHA), alpha=ALPHA)
        x = decoder.sample(model, LinearReward(W), generators(particles * populations, offset=7)).x0
        errors[particles], z = population_z(x, model, populations)
        assert (z.abs().max() > Z) if particles == 2 else (z.abs().max() < Z), (particles, errors[particles], z)
    assert errors[64][3:].norm() < errors[2][3:].norm()


def test_nested_is_with_the_exact_value_approaches_the_target_as_the_population_grows():
    """As SMC's test, with nested IS (M = 4): one particle per population (512 of them) is SVDD with M = 4,
    short of the target beyond 4 SE; 32 particles per population (64 populations) are within 4 SE. Populations
    are resampled when their ESS falls below half their size, systematically (less collapse than at every step).
    """
    for particles, populations in ((1, 512), (32, 64)):
        model = SMC_CHAINS["flow"](populations)
        decoder = NestedIS(MixtureSoftValue(W, ALPHA), num_candidates=4, alpha=ALPHA, ess_threshold=0.5,
                           resampling="systematic")
        x = decoder.sample(model, LinearReward(W), generators(particles * populations, offset=7)).x0
        error, z = population_z(x, model, populations)
        assert (z.abs().max() > Z) if particles == 1 else (z.abs().max() < Z), (particles, error, z)


def test_svdd_with_the_exact_value_approaches_the_target_as_m_grows():
    """800 i.i.d. samples: with M = 4 candidates the target is beyond 4 SE (mixture_z); with M = 32 every
    component weight, mean, variance and covariance of the target is within 4 SE."""
    model = GaussianMixtureFlow(num_steps=50, noise_level=SQRT2)
    target = law(model, tilted=True)
    for m in (4, 32):
        x = SVDD(MixtureSoftValue(W, ALPHA), num_candidates=m, alpha=ALPHA).sample(
            model, LinearReward(W), generators(800, offset=3)).x0
        z = mixture_z(x, *target, model.sigma0)
        assert (z.abs().max() > Z) if m == 4 else (z.abs().max() < Z), (m, z)


def test_svdd_with_the_posterior_sampling_value_rises_towards_the_target_mean_as_m_grows():
    """PosteriorSamplingValue(K = 4, x0_steps = 3): x_0 drawn by 3 SDE steps, an approximation of p(x_0 | x_k).
    400 i.i.d. samples per M (SE of a mean reward: sample std / sqrt(400)): M = 1 is pretrained sampling (its
    mean reward within 4 SE of p's); M = 1 -> 4 raises the mean reward by more than 4 SE of the difference, and
    M = 4 -> 12 does not lower it by more than that (the rise is about 2 SE); at M = 12 the mean is below the
    target's + 4 SE and above the midpoint of p's and the target's mean rewards by more than 4 SE."""
    model = GaussianMixtureFlow(num_steps=50, noise_level=SQRT2)
    start, target = mean_reward(model, tilted=False), mean_reward(model, tilted=True)
    means, ses = [], []
    for m in (1, 4, 12):
        r = SVDD(PosteriorSamplingValue(num_samples=4, x0_steps=3), num_candidates=m, alpha=ALPHA).sample(
            model, LinearReward(W), generators(400, offset=11)).rewards.double()
        means.append(float(r.mean()))
        ses.append(float(r.std()) / math.sqrt(len(r)))
    assert abs(means[0] - start) < Z * ses[0], (means, ses)
    assert means[1] - means[0] > Z * math.hypot(ses[1], ses[0]), (means, ses)
    assert means[2] - means[1] > -Z * math.hypot(ses[2], ses[1]), (means, ses)
    assert (start + target) / 2 + Z * ses[2] < means[2] < target + Z * ses[2], (means, start, target)


def test_metropolis_refinement_approaches_the_target_as_rounds_grow():
    """Refinement with pretrained re-decoding from 80% of the chain, Metropolis acceptance: after 0 rounds the
    samples are p's (the target beyond 4 SE), after 10 every component weight, mean, variance and covariance of
    the target is within 4 SE (1000 i.i.d. samples, mixture_z)."""
    model = GaussianMixtureFlow(num_steps=50, noise_level=SQRT2)
    target = law(model, tilted=True)
    for rounds in (0, 10):
        decoder = Refinement(PretrainedSampling(), rounds=rounds, noise_level=0.8, acceptance="metropolis", alpha=ALPHA)
        x = decoder.sample(model, LinearReward(W), generators(1000, offset=5)).x0
        z = mixture_z(x, *target, model.sigma0)
        assert (z.abs().max() > Z) if rounds == 0 else (z.abs().max() < Z), (rounds, z)


# --- a = 0: the decoders that need distinct draws refuse the flow ODE -------------------------------------
@pytest.mark.parametrize("decoder", ["svdd", "smc", "nested_is", "beam"])
def test_decoders_that_need_stochastic_proposals_refuse_the_flow_ode(decoder):
    make = {"svdd": lambda: SVDD(PosteriorMeanValue(), 4), "smc": lambda: SMC(PosteriorMeanValue()),
            "nested_is": lambda: NestedIS(PosteriorMeanValue(), 2), "beam": lambda: BeamSearch(PosteriorMeanValue())}
    model = GaussianMixtureFlow(num_steps=4, noise_level=0.0)
    assert isinstance(model, RectifiedFlow) and not model.stochastic_proposals
    calls = []
    with pytest.raises(ValueError, match="needs stochastic proposals.*noise_level > 0") as error:
        make[decoder]().sample(model, lambda xs: calls.append(1) or [0.0] * len(xs), generators(2))
    assert not calls and "\n" not in str(error.value)  # refused in one line, before any reward call
    for fine in (SVDD(PosteriorMeanValue(), 1), PretrainedSampling()):
        assert len(fine.sample(model, LinearReward(W), generators(2)).samples) == 2
