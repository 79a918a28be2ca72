"""The library implementations that replaced hand-written training code give the same numbers:
torch's AveragedModel for the EMA copies (fixed decay, and diffusers' warm-up), torch's LinearLR +
CosineAnnealingLR for the learning-rate schedule."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from svdd_lightning.lightning.training import _adamw_with_cosine, exponential_moving_average


def hand_written_factor(warmup: int, total: int):
    """The schedule the project used before (a LambdaLR factor)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))
    return factor


@pytest.mark.parametrize("warmup,total", [(200, 1984), (5, 40), (1, 10), (0, 25)])
def test_the_schedule_is_the_former_warmup_then_cosine(warmup, total):
    network = nn.Linear(2, 1)
    module = SimpleNamespace(parameters=network.parameters, trainer=SimpleNamespace(estimated_stepping_batches=total))
    configured = _adamw_with_cosine(module, lr=2e-3, weight_decay=0.0, warmup_steps=warmup)
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    factor = hand_written_factor(warmup, total) if warmup else (lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    for step in range(total + 1):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * factor(step), rel=1e-12, abs=1e-18), step
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("warmup", [False, True])
def test_the_ema_is_the_former_lerp_loop(warmup):
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    ema = exponential_moving_average(online, decay=0.9, warmup=warmup)
    reference = [p.detach().clone() for p in online.parameters()]  # the former deepcopy
    assert not any(p.requires_grad for p in ema.parameters())
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), reference))
    for step in range(1, 6):
        with torch.no_grad():
            for p in online.parameters():
                p.add_(torch.randn_like(p))
        ema.update_parameters(online)
        decay = min(0.9, (1 + step) / (10 + step)) if warmup else 0.9  # global_step after the step
        for r, p in zip(reference, online.parameters()):
            r.lerp_(p.detach(), 1 - decay)
        for a, b in zip(ema.module.parameters(), reference):
            assert torch.allclose(a, b, rtol=0, atol=1e-7), step
