"""GDSS's SDEs: marginals, Tweedie's posterior mean, and the reverse-diffusion predictor."""
from __future__ import annotations

import pytest
import torch

from svdd_lightning.domains.molecules.sde import VESDE, VPSDE

SDES = [VESDE(0.1, 1.0, 1000), VESDE(0.2, 1.0, 1000), VPSDE(0.1, 1.0, 1000)]


def gaussian_score(x, t, sde, mu, s0):
    """Exact score of x_t when x_0 ~ N(mu, s0^2) per coordinate."""
    m, s = (v.view(-1, 1, 1) for v in sde.marginal(t))
    return -(x - m * mu) / (m**2 * s0**2 + s**2)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__ + str(s._init_args))
def test_tweedie_is_the_exact_posterior_mean_for_a_gaussian(sde):
    torch.manual_seed(0)
    t = torch.tensor([0.05, 0.3, 0.7, 1.0])
    mu, s0 = torch.randn(1, 5, 3), 0.5
    x = torch.randn(4, 5, 3)
    m, s = (v.view(-1, 1, 1) for v in sde.marginal(t))
    exact = mu + m * s0**2 / (m**2 * s0**2 + s**2) * (x - m * mu)
    assert torch.allclose(sde.tweedie(x, gaussian_score(x, t, sde, mu, s0), t), exact, atol=1e-5)
    # a point mass (s0 = 0): Tweedie recovers x_0 exactly from any x_t
    x0 = torch.randn(4, 5, 3)
    xt = m * x0 + s * torch.randn(4, 5, 3)
    assert torch.allclose(sde.tweedie(xt, -(xt - m * x0) / s**2, t), x0, atol=1e-4)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__ + str(s._init_args))
def test_reverse_diffusion_with_the_exact_score_samples_the_data_distribution(sde):
    torch.manual_seed(1)
    mu, s0, n = torch.tensor(0.7), 0.3, 4000
    # start from the exact marginal at t = 1 (GDSS's short SDEs do not forget the data entirely)
    m1, s1 = sde.marginal(torch.tensor(1.0))
    x = m1 * mu + (m1**2 * s0**2 + s1**2).sqrt() * torch.randn(n, 1, 1)
    times = torch.linspace(1.0, 1e-3, sde.num_scales)
    for t in times:
        tt = t.expand(n)
        mean, std = sde.reverse_step(x, gaussian_score(x, tt, sde, mu, s0), tt)
        x = mean + std * torch.randn_like(x)
    # the chain ends at the marginal of t = 0: the data, plus sigma_min of noise for VE
    m0, std0 = sde.marginal(torch.tensor(0.0))
    assert abs(float(x.mean()) - float(m0 * mu)) < 0.03
    assert abs(float(x.std()) - float((m0**2 * s0**2 + std0**2).sqrt())) < 0.03


def test_sde_arguments_are_checked():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(1.0, 0.1)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSDE(1.0, 0.1)
