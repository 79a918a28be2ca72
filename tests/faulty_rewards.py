"""Rewards that misbehave as real ones do (hang, give NaN), named by class path in test configs."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Sequence

from svdd_lightning.core.reward import Reward


def g_count(samples: Sequence[str]) -> list[float]:
    return [float(s.count("G")) for s in samples]


class AlwaysNaN(Reward):
    """Never scores: NaN for every sample (a reward that matches nothing it is given)."""

    name = "always_nan"

    def __call__(self, samples: Sequence[str]) -> list[float]:
        return [math.nan] * len(samples)


class HangsOnFirstSample(Reward):
    """The G count, but every call holding the first sample it was ever given never returns while ``flag``
    exists (a docking run stuck on one pathological molecule)."""

    name = "hangs_on_first"

    def __init__(self, flag: str) -> None:
        self.flag, self.first = flag, None

    def __call__(self, samples: Sequence[str]) -> list[float]:
        samples = list(samples)
        self.first = samples[0] if self.first is None else self.first
        while self.first in samples and Path(self.flag).exists():
            time.sleep(0.02)
        return g_count(samples)


class HangsAfterCalls(Reward):
    """The G count, until call number ``calls`` + 1: that call writes ``<flag>.<pid>.blocked`` and never returns
    while ``flag`` exists (an oracle behind a network that stopped answering); with ``sigterm`` it also sends
    its own process SIGTERM once blocked, as a scheduler's preemption would."""

    name = "hangs_after_calls"

    def __init__(self, flag: str, calls: int, sigterm: bool = False) -> None:
        self.flag, self.calls, self.sigterm, self.seen = flag, calls, sigterm, 0

    def __call__(self, samples: Sequence[str]) -> list[float]:
        self.seen += 1
        if self.seen > self.calls and Path(self.flag).exists():
            Path(f"{self.flag}.{os.getpid()}.blocked").write_text(str(time.time()))
            if self.sigterm:
                os.kill(os.getpid(), 15)
            while Path(self.flag).exists():
                time.sleep(0.02)
        return g_count(samples)
