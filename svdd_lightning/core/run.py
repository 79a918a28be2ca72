"""One decoding call's frozen model, reward and compute counters, and lazily evaluated candidates."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_map

from .model import DiffusionModel, Prediction
from .reward import Reward
from .state import State, batch_size, index_rows, map_chunked, slice_rows


@dataclass
class DecodeStats:
    """Compute spent by a decoding call, summed over its samples.

    ``denoiser_calls`` counts rows passed through the denoiser (one NFE per row; a row whose state
    did not change since its last evaluation is reused, not recomputed, when the model's denoiser
    ignores the level). ``gradient_calls`` counts reward gradients (DPS).
    """

    denoiser_calls: int = 0
    gradient_calls: int = 0
    reward_calls: int = 0
    reward_failures: int = 0
    value_calls: int = 0

    def per_sample(self, n: int) -> dict[str, float]:
        return {f.name: getattr(self, f.name) / max(n, 1) for f in fields(self)}


_step_observer: ContextVar[Callable[[int, int], None] | None] = ContextVar("step_observer", default=None)


@contextmanager
def observe_steps(callback: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``callback(level, num_steps)`` after every proposal step (level reached) of the decodes run
    inside the block (e.g. to show progress); nothing is synchronised with the device."""
    token = _step_observer.set(callback)
    try:
        yield
    finally:
        _step_observer.reset(token)


def _rows_equal(a: State, b: State) -> torch.Tensor:
    leaves_a, _ = tree_flatten(a)
    leaves_b, _ = tree_flatten(b)
    same = torch.ones(leaves_a[0].shape[0], dtype=torch.bool, device=leaves_a[0].device)
    for ta, tb in zip(leaves_a, leaves_b):
        same &= (ta == tb).reshape(ta.shape[0], -1).all(dim=1)
    return same


class Run:
    """One decoding call of samples ``indices``: counts every denoiser and reward evaluation and bounds
    memory. ``conditions[b]`` is sample b's condition id (``index % model.num_conditions``)."""

    def __init__(self, model: DiffusionModel, reward: Reward, indices: Sequence[int],
                 chunk_size: int | None = None) -> None:
        if reward.floor != reward.floor:
            raise ValueError(f"reward {reward.name}: decoding needs a finite floor (a NaN floor keeps unscored samples)")
        self.model = model
        self.reward = reward
        self.conditions = torch.as_tensor(list(indices), dtype=torch.long) % model.num_conditions
        self.chunk_size = chunk_size
        self.stats = DecodeStats()

    def initial_state(self, generators: Sequence[torch.Generator]) -> State:
        """Prior states for k generators per sample (rows b*k .. b*k+k-1 are sample b's, e.g. Best-of-N's
        children), each under its sample's condition."""
        if not self.conditions.numel() or len(generators) % len(self.conditions):
            raise ValueError(f"{len(generators)} generators for {len(self.conditions)} samples (expected a multiple)")
        k = len(generators) // len(self.conditions)
        return self.model.initial_state(generators, self.conditions.repeat_interleave(k))

    def denoise(self, x: State, level: int, reuse: tuple[State, Prediction] | None = None) -> Prediction:
        """``model.denoise`` in chunks; rows equal to ``reuse``'s state take its prediction."""
        if reuse is not None and not self.model.denoiser_uses_level:
            prev_x, prev_pred = reuse
            fresh = ~_rows_equal(x, prev_x)
            if not bool(fresh.all()):
                out = tree_map(torch.clone, prev_pred)
                idx = fresh.nonzero().squeeze(1)
                if idx.numel():
                    new = self.denoise(index_rows(x, idx), level)
                    tree_map(lambda o, n: o.index_copy_(0, idx.to(o.device), n), out, new)
                return out
        self.stats.denoiser_calls += batch_size(x)
        return map_chunked(lambda s: self.model.denoise(s, level), x, self.chunk_size)

    def propose(self, x: State, prediction: Prediction, level: int, generators: list[torch.Generator],
                num_candidates: int) -> State:
        """``model.propose``, counting the denoiser calls a proposal makes itself (e.g. a
        predictor-corrector sampler's second score evaluation)."""
        self.stats.denoiser_calls += batch_size(x) * num_candidates * self.model.proposal_denoiser_calls
        proposals = self.model.propose(x, prediction, level, generators, num_candidates)
        observer = _step_observer.get()
        if observer is not None:
            observer(level + 1, self.model.num_steps)
        return proposals

    def score(self, x0: State) -> torch.Tensor:
        """Reward of clean states (decoded first), floored where the reward fails.

        Identical decoded samples in one call (hashable ones: strings, SMILES) are scored once:
        SVDD's candidates often share their x0_hat, e.g. every candidate that unmasked nothing.
        """
        n, step = batch_size(x0), self.chunk_size or batch_size(x0)
        samples = [s for i in range(0, n, step) for s in self.model.decode(slice_rows(x0, i, min(i + step, n)))]
        try:
            distinct = list(dict.fromkeys(samples))
        except TypeError:  # unhashable samples (tensors): score every one
            distinct = samples
        failures_before = self.reward.failures
        values = torch.cat([self.reward(distinct[i: i + step]) for i in range(0, len(distinct), step)])
        self.stats.reward_calls += len(distinct)
        self.stats.reward_failures += self.reward.failures - failures_before
        if distinct is samples:
            return values
        scores = dict(zip(distinct, values.tolist()))
        return torch.tensor([scores[s] for s in samples], dtype=torch.float32)


class Candidates:
    """States at one level whose denoiser output is computed once, on first use."""

    def __init__(self, run: Run, x: State, level: int, parent: tuple[State, Prediction] | None = None,
                 prediction: Prediction | None = None) -> None:
        self.run = run
        self.x = x
        self.level = level
        self._parent = parent
        self._prediction = prediction

    @property
    def is_clean(self) -> bool:
        return self.level == self.run.model.num_steps

    @property
    def prediction(self) -> Prediction:
        if self._prediction is None:
            self._prediction = self.run.denoise(self.x, self.level, reuse=self._parent)
        return self._prediction

    def x0_hat(self, num_steps: int = 1) -> State:
        """The posterior mean E[x_0 | x_k], or with ``num_steps`` > 1 the end of that many deterministic
        denoising steps (each step after the first is one denoiser call per row, counted)."""
        if self.is_clean:
            return self.x
        model = self.run.model
        if num_steps == 1:
            return model.x0_hat(self.x, self.prediction, self.level)
        self.run.stats.denoiser_calls += batch_size(self.x) * (num_steps - 1)
        return map_chunked(lambda rows: model.x0_estimate(rows[0], rows[1], self.level, num_steps),
                           (self.x, self.prediction), self.run.chunk_size)

    def time(self) -> torch.Tensor:
        return torch.full((batch_size(self.x),), self.run.model.time(self.level))

    def take(self, index: torch.Tensor) -> "Candidates":
        """The chosen rows, keeping their prediction if it was already computed."""
        parent = None if self._parent is None else (index_rows(self._parent[0], index), index_rows(self._parent[1], index))
        pred = None if self._prediction is None else index_rows(self._prediction, index)
        return Candidates(self.run, index_rows(self.x, index), self.level, parent, pred)

