"""Value-regression objectives (Algorithm 2 and its exp(r / alpha) variant)."""
import math

import pytest
import torch

from svdd_lightning.lightning.training import value_loss


@pytest.mark.parametrize("target, alpha", [("reward", 1.0), ("exp_reward", 0.5), ("exp_reward", 2.0)])
def test_value_loss_minimiser_is_the_mean_or_the_soft_value(target, alpha):
    """A constant prediction fitted to rewards {0, 3} (equally likely) converges to E[r] for MSE and to
    alpha * log E[exp(r / alpha)] for the exp objective."""
    rewards = torch.tensor([0.0, 3.0] * 64)
    v = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([v], lr=0.05)
    for _ in range(2000):
        optimizer.zero_grad()
        value_loss(v.expand_as(rewards), rewards, target, alpha, reward_offset=3.0).backward()
        optimizer.step()
    expected = 1.5 if target == "reward" else alpha * math.log((1 + math.exp(3.0 / alpha)) / 2)
    assert float(v) == pytest.approx(expected, abs=1e-2)


def test_value_loss_rejects_unknown_target():
    with pytest.raises(ValueError, match="ValueRegression.target"):
        value_loss(torch.zeros(2), torch.zeros(2), "q_learning")
