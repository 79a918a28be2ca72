"""One decoding call's frozen model, reward and compute counters, and lazily evaluated candidates."""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_map

from .model import DiffusionModel, Prediction
from .reward import Reward
from .state import State, batch_size, concat_rows, distinct_rows, index_rows, map_chunked, slice_rows, state_device

log = logging.getLogger(__name__)


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


def _rows_equal(a: State, b: State) -> torch.Tensor:
    leaves_a, _ = tree_flatten(a)
    leaves_b, _ = tree_flatten(b)
    same = torch.ones(leaves_a[0].shape[0], dtype=torch.bool, device=leaves_a[0].device)
    for ta, tb in zip(leaves_a, leaves_b):
        same &= (ta == tb).reshape(ta.shape[0], -1).all(dim=1)
    return same


class Run:
    """One decoding call of samples ``indices``: counts every denoiser and reward evaluation and bounds
    memory. ``conditions[b]`` is sample b's condition id (``index % model.num_conditions``).

    ``chunk_size`` bounds the rows of every network call (denoiser, value, reward); without it the
    denoiser runs in the model's preferred chunks for its device (:meth:`DiffusionModel.denoise_chunk_rows`)
    and everything else on the whole batch.
    """

    def __init__(self, model: DiffusionModel, reward: Reward, indices: Sequence[int],
                 chunk_size: int | None = None) -> None:
        self.model = model
        self.reward = reward
        self.conditions = torch.as_tensor(list(indices), dtype=torch.long) % model.num_conditions
        self.chunk_size = chunk_size
        self.denoise_chunk = chunk_size or model.denoise_chunk_rows()
        self.stats = DecodeStats()
        self._direct_scoring = True  # until the reward declines to read the model's states

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
        return map_chunked(lambda s: self.model.denoise(s, level), x, self.denoise_chunk)

    def propose(self, x: State, prediction: Prediction, level: int, generators: list[torch.Generator],
                num_candidates: int) -> State:
        """``model.propose``, counting the denoiser calls a proposal makes itself (e.g. a
        predictor-corrector sampler's second score evaluation). Such a proposal runs on row chunks whose
        ``num_candidates`` proposals fit in the denoiser's chunk (row b's proposals depend on row b and
        ``generators[b]`` alone, so chunking changes nothing else)."""
        self.stats.denoiser_calls += batch_size(x) * num_candidates * self.model.proposal_denoiser_calls
        n = batch_size(x)
        rows = max(1, self.denoise_chunk // num_candidates) if self.denoise_chunk else n
        if not self.model.proposal_denoiser_calls or n <= rows:
            return self.model.propose(x, prediction, level, generators, num_candidates)
        return concat_rows([self.model.propose(slice_rows(x, i, min(i + rows, n)),
                                               slice_rows(prediction, i, min(i + rows, n)), level,
                                               generators[i: i + rows], num_candidates) for i in range(0, n, rows)])

    def decode(self, x0: State) -> list:
        """``model.decode`` in chunks of ``chunk_size`` rows."""
        n, step = batch_size(x0), self.chunk_size or batch_size(x0)
        return [s for i in range(0, n, step) for s in self.model.decode(slice_rows(x0, i, min(i + step, n)))]

    def score(self, x0: State, samples: list | None = None) -> torch.Tensor:
        """Reward of clean states, floored where the reward fails (``samples``: their decoding, if made).

        A reward with ``score_states`` reads the states on the model's device (no decoding; distinct
        token rows once each, in the order the decoded path would score them, so the scores are the same);
        otherwise the states are decoded and identical decoded samples in one call (hashable ones: strings,
        SMILES) are scored once: SVDD's candidates often share their x0_hat, e.g. every candidate that
        unmasked nothing. The scores are on the CPU, or on the device that scored them.
        """
        if samples is None:
            direct = self._score_states(x0)
            if direct is not None:
                return direct
            samples = self.decode(x0)
        step = self.chunk_size or len(samples)
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

    def _score_states(self, x0: State) -> torch.Tensor | None:
        """The reward's ``score_states`` on x0 in chunks (each distinct row of a token tensor once), or None."""
        if not self._direct_scoring or not callable(getattr(self.reward.fn, "score_states", None)):
            return None
        tokens = isinstance(x0, torch.Tensor) and not x0.is_floating_point()
        first, inverse = distinct_rows(x0) if tokens else (None, None)
        rows = x0[first] if tokens else x0
        n, step = batch_size(rows), self.chunk_size or batch_size(rows)
        failures_before, parts = self.reward.failures, []
        try:
            for i in range(0, n, step):
                values = self.reward.score_states(self.model, slice_rows(rows, i, min(i + step, n)))
                if values is None:  # the reward cannot read this model's states: decode them from now on
                    self._direct_scoring = False
                    return None
                parts.append(values)
        except Exception as err:  # the decoded path isolates failing samples
            log.warning("reward %s failed to score states directly (%s); decoding them instead", self.reward.name, err)
            self._direct_scoring = False
            return None
        self.stats.reward_calls += n
        self.stats.reward_failures += self.reward.failures - failures_before
        values = torch.cat(parts)
        return values if inverse is None else values[inverse.to(values.device)]


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
        """Each row's diffusion time, on the state's device."""
        return torch.full((batch_size(self.x),), self.run.model.time(self.level), device=state_device(self.x))

    def take(self, index: torch.Tensor) -> "Candidates":
        """The chosen rows, keeping their prediction if it was already computed."""
        parent = None if self._parent is None else (index_rows(self._parent[0], index), index_rows(self._parent[1], index))
        pred = None if self._prediction is None else index_rows(self._prediction, index)
        return Candidates(self.run, index_rows(self.x, index), self.level, parent, pred)

