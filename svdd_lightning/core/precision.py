"""Scoring in float32 inside mixed-precision runs.

Under ``precision: bf16-mixed`` (or fp16) Lightning runs ``predict_step`` inside ``torch.autocast``,
which would run reward oracles and value networks in bf16 too: ten one-token variants of a DNA
sequence then share 8 reward values (steps of 1/32), so SVDD's argmax ties and SMC's weights coarsen.
Rewards and values are therefore evaluated with autocast turned off, on float32 inputs; the
denoiser keeps the run's precision.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch

AUTOCAST_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia")


@contextmanager
def float32_scoring() -> Iterator[None]:
    """Turn autocast off, on every device type where it is on, for the block."""
    with ExitStack() as stack:
        for device_type in AUTOCAST_DEVICE_TYPES:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def as_float32(t: torch.Tensor) -> torch.Tensor:
    """Floating tensors in float32 (inputs made in bf16 by an autocast region); others unchanged."""
    return t.float() if t.is_floating_point() else t
