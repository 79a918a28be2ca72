"""The steps decoders are written in: pretrained paths, M candidates per row, soft values, and the
resampling of SMC's populations. Every decoder of the core reads as its paper's algorithm over these."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .run import Candidates, Run
from .selection import effective_sample_size, resample
from .state import State, repeat_rows
from .value import Value


def spawn_generators(generators: Sequence[torch.Generator], n: int) -> list[torch.Generator]:
    """n child generators per generator, in row order b*n + j, seeded from the parent alone."""
    children = []
    for g in generators:
        for seed in torch.randint(0, 2**62, (n,), generator=g).tolist():
            children.append(torch.Generator().manual_seed(seed))
    return children


def ancestral(run: Run, x: State, generators: list[torch.Generator],
              on_level: Callable[[int, State], None] | None = None, level: int = 0) -> State:
    """Run the pretrained chain from ``level`` to the clean level; ``on_level(k, x_k)`` sees every state."""
    return advance(run, Candidates(run, x, level), run.model.num_steps, generators, on_level).x


def advance(run: Run, current: Candidates, stop: int, generators: list[torch.Generator],
            on_level: Callable[[int, State], None] | None = None) -> Candidates:
    """Step the pretrained chain (one proposal per row, row b from ``generators[b]``) up to level ``stop``."""
    for level in range(current.level, stop):
        if on_level is not None:
            on_level(level, current.x)
        x_next = run.propose(current.x, current.prediction, level, generators, 1)
        current = Candidates(run, x_next, level + 1, parent=(current.x, current.prediction), generators=generators)
    return current


def expand(run: Run, current: Candidates, stop: int, generators: list[torch.Generator], m: int) -> Candidates:
    """M candidates per row of ``current`` (rows b*M .. b*M+M-1 are row b's) drawn from p_pre up to level
    ``stop``: one step for all rows in one batched call (row b with ``generators[b]``), then each candidate
    alone, with its own child generator, to ``stop`` (selection every ``stop - level`` steps)."""
    level = current.level
    proposals = run.propose(current.x, current.prediction, level, generators, m)
    parent = (repeat_rows(current.x, m), repeat_rows(current.prediction, m))
    candidates = Candidates(run, proposals, level + 1, parent=parent, generators=repeat_each(generators, m))
    if stop > level + 1:
        candidates = advance(run, candidates, stop, spawn_generators(generators, m))
    return candidates


def soft_value(value: Value, candidates: Candidates) -> torch.Tensor:
    """v(x_k): the value function, or the reward itself for clean states."""
    return candidates.run.score(candidates.x) if candidates.is_clean else value(candidates)


def condition_populations(run: Run) -> list[torch.Tensor]:
    """Row indices of each condition's samples (all rows for an unconditional model): SMC's populations."""
    return [(run.conditions == c).nonzero().squeeze(1) for c in run.conditions.unique()]


def repeat_each(generators: Sequence[torch.Generator], times: int) -> list[torch.Generator]:
    """Each sample's generator for each of its ``times`` rows (rows b*times .. b*times+times-1 share it)."""
    return [g for g in generators for _ in range(times)]


def resample_populations(log_w: torch.Tensor, populations: list[torch.Tensor], generators: Sequence[torch.Generator],
                         ess_threshold: float, scheme: str, force: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample each population (rows of one condition) whose effective sample size is below
    ``ess_threshold`` x its size, or every one when ``force`` (the last step), with its first row's generator.

    Returns the ancestor of every row (itself where its population was not resampled) and the mask of the
    rows whose population was resampled (their weights restart).
    """
    ancestors, resampled = torch.arange(len(log_w)), torch.zeros(len(log_w), dtype=torch.bool)
    for rows in populations:
        if force or effective_sample_size(log_w[rows]) < ess_threshold * len(rows) + 1e-9:
            ancestors[rows] = rows[resample(log_w[rows], generators[int(rows[0])], scheme)]
            resampled[rows] = True
    return ancestors, resampled
