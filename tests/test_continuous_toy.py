"""The decoders on a continuous-state model: a 2-D Gaussian-mixture DDPM with the exact noise prediction.

Data: 0.5 N((-2, 0), 0.4^2 I) + 0.3 N((2, 0), .) + 0.2 N((0, 2.5), .), T = 50 steps; reward r(x) = x[0].
Pretrained sampling reproduces the mixture; every guided decoder moves the mass to the right.
"""
from __future__ import annotations

import math

import pytest
import torch

from svdd_lightning import DPS, SMC, SVDD, BestOfN, PosteriorMeanValue, PretrainedSampling
from toys import FirstCoordinate, GaussianMixtureDDPM, generators

T = 50


pytestmark = pytest.mark.usefixtures("inference_mode")


@pytest.fixture(scope="module")
def model():
    return GaussianMixtureDDPM(num_steps=T)


@pytest.fixture(scope="module")
def pretrained(model):
    with torch.inference_mode():
        return PretrainedSampling().sample(model, FirstCoordinate(), generators(2000))


def test_eps_is_the_exact_noise_prediction(model):
    """eps(x, i) = -sqrt(1 - abar_i) grad log q_i(x) for the noised mixture q_i."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for level in (0, 10, 30, T - 1):
        abar = float(model.abar[model.index(level)])
        var = abar * model.sigma0 ** 2 + 1 - abar
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            d2 = ((xg.unsqueeze(1) - math.sqrt(abar) * model.means) ** 2).sum(-1)
            log_q = torch.logsumexp(model.log_weights - d2 / (2 * var), dim=1)
            (score,) = torch.autograd.grad(log_q.sum(), xg)
        assert torch.allclose(model.denoise(x, level), -math.sqrt(1 - abar) * score, atol=1e-10)


def test_pretrained_sampling_reproduces_the_mixture(model, pretrained):
    x = pretrained.x0
    assert x.shape == (2000, 2) and len(pretrained.samples) == 2000
    assert torch.allclose(x.mean(0), model.data_mean, atol=0.15), x.mean(0)
    w = model.log_weights.exp()
    second = (w.unsqueeze(1) * (model.means ** 2 + model.sigma0 ** 2)).sum(0)
    assert torch.allclose(x.std(0), (second - model.data_mean ** 2).sqrt(), rtol=0.1), x.std(0)
    nearest = torch.cdist(x, model.means).argmin(1)
    assert torch.allclose(torch.bincount(nearest, minlength=3).double() / 2000, w, atol=0.04)
    assert torch.allclose(pretrained.rewards.double(), x[:, 0], atol=1e-5)
    assert pretrained.stats.denoiser_calls == 2000 * T  # T per sample
    assert pretrained.stats.reward_calls == 2000


def test_best_of_n_raises_the_reward(model, pretrained):
    n, batch = 8, 500
    result = BestOfN(n=n).sample(model, FirstCoordinate(), generators(batch))
    assert result.rewards.mean() > pretrained.rewards.mean() + 1.5
    assert result.stats.denoiser_calls == batch * n * T  # N * T per sample
    assert result.stats.reward_calls == batch * (n + 1)  # the N candidates, then the kept sample


def test_svdd_posterior_mean_raises_the_reward(model, pretrained):
    m, batch = 8, 500
    result = SVDD(PosteriorMeanValue(), num_candidates=m, alpha=0.0).sample(model, FirstCoordinate(), generators(batch))
    assert result.rewards.mean() > pretrained.rewards.mean() + 1.5
    # the M candidates of each of the first T - 1 steps are denoised once (for x0_hat), the kept
    # one's output is reused for its next proposal; the last step's candidates are clean and scored
    # by the reward. Plus the prior state's denoising: M (T - 1) + 1 per sample.
    assert result.stats.denoiser_calls == batch * (m * (T - 1) + 1)
    assert result.stats.reward_calls == batch * (m * T + 1)


def test_smc_raises_the_reward(model, pretrained):
    batch = 1000
    result = SMC(PosteriorMeanValue(), alpha=0.5).sample(model, FirstCoordinate(), generators(batch))
    assert result.rewards.mean() > pretrained.rewards.mean() + 1.5
    assert result.stats.denoiser_calls == batch * T  # one per particle per step, like pretrained sampling
    assert result.x0.shape == (batch, 2)


def test_dps_raises_the_reward(model, pretrained):
    batch = 1000
    result = DPS(scale=1.0).sample(model, FirstCoordinate(), generators(batch))
    assert result.rewards.mean() > pretrained.rewards.mean() + 1.0
    assert result.stats.denoiser_calls == batch * T and result.stats.gradient_calls == batch * T
    # a stronger guidance pushes further
    stronger = DPS(scale=3.0).sample(model, FirstCoordinate(), generators(batch))
    assert stronger.rewards.mean() > result.rewards.mean() + 0.3


def test_dps_needs_a_differentiable_reward(model):
    with pytest.raises(TypeError, match="relaxed"):
        DPS().sample(model, lambda xs: [x[0] for x in xs], generators(2))
