"""One decoding call's frozen model, reward and compute counters, and lazily evaluated candidates."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_map

from .model import DiffusionModel, Prediction
from .reward import GuardedReward, Scores
from .state import (State, batch_size, concat_rows, distinct_rows, index_rows, map_chunked, repeat_rows, slice_rows,
                    state_device)

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
    memory. ``conditions[b]`` is sample b's condition id (``index % model.num_conditions``).

    ``chunk_size`` bounds the rows of every network call (denoiser, value, reward); without it the
    denoiser runs in the model's preferred chunks for its device (:meth:`DiffusionModel.denoise_chunk_rows`)
    and everything else on the whole batch.
    """

    def __init__(self, model: DiffusionModel, reward: GuardedReward, indices: Sequence[int],
                 chunk_size: int | None = None) -> None:
        if reward.floor != reward.floor:
            raise ValueError(f"reward {reward.name}: decoding needs a finite floor (a NaN floor keeps unscored samples)")
        self.model = model
        self.reward = reward
        self.conditions = torch.as_tensor(list(indices), dtype=torch.long) % model.num_conditions
        self.chunk_size = chunk_size
        self.denoise_chunk = chunk_size or model.denoise_chunk_rows()
        self.stats = DecodeStats()
        self.reward_errors = 0  # samples on which the reward function raised (floored, and counted as failures)
        self.reward_failure_causes: dict[str, int] = {}  # floored evaluations by cause (raised, timeout, nan)
        self.last_reward_error: str | None = None
        self._direct_scoring = True  # until the reward declines to read the model's states
        # a reward that scores in the background (``submit``: a per-sample function in worker processes, e.g.
        # ViennaRNA, RDKit) is exact per sample, so its scores are kept for the whole call: a sample met again
        # (an x0_hat repeated at a later step, a clean candidate that was an x0_hat) is not scored again
        self.cache: dict | None = {} if reward.fn.scores_in_background else None

    def initial_state(self, generators: Sequence[torch.Generator]) -> State:
        """Prior states for k generators per sample (rows b*k .. b*k+k-1 are sample b's, e.g. Best-of-N's
        children), each under its sample's condition."""
        if not self.conditions.numel() or len(generators) % len(self.conditions):
            raise ValueError(f"{len(generators)} generators for {len(self.conditions)} samples (expected a multiple)")
        k = len(generators) // len(self.conditions)
        return self.model.initial_state(generators, self.conditions.repeat_interleave(k))

    def denoise(self, x: State, level: int, reuse: tuple[State, Prediction] | None = None,
                on_ready: Callable[[int, int, Prediction], None] | None = None) -> Prediction:
        """``model.denoise`` in chunks; rows equal to ``reuse``'s state take its prediction.

        ``on_ready(start, stop, prediction)`` is called, in order, whenever rows start..stop-1 are final,
        with their prediction, so that a caller can start on them (e.g. score their x0_hat in the
        background) while the next chunk is denoised; the chunks are the same with or without it.
        """
        n = batch_size(x)
        if reuse is not None and not self.model.denoiser_uses_level:
            prev_x, prev_pred = reuse
            fresh = ~_rows_equal(x, prev_x)
            if not bool(fresh.all()):
                out = tree_map(torch.clone, prev_pred)
                idx = fresh.nonzero().squeeze(1)
                self.stats.denoiser_calls += idx.numel()
                chunk, done = self.denoise_chunk or max(idx.numel(), 1), 0
                for i in range(0, idx.numel(), chunk):
                    rows = idx[i: i + chunk]
                    new = self.model.denoise(index_rows(x, rows), level)
                    tree_map(lambda o, p: o.index_copy_(0, rows.to(o.device), p), out, new)
                    if on_ready is not None:  # every row before the next fresh one is final
                        stop = int(idx[i + chunk]) if i + chunk < idx.numel() else n
                        on_ready(done, stop, slice_rows(out, done, stop))
                        done = stop
                if on_ready is not None and done < n:
                    on_ready(done, n, slice_rows(out, done, n))
                return out
        self.stats.denoiser_calls += n
        if on_ready is None:
            return map_chunked(lambda s: self.model.denoise(s, level), x, self.denoise_chunk)
        chunk, parts = self.denoise_chunk or n, []
        for i in range(0, n, chunk):
            parts.append(self.model.denoise(x if chunk >= n else slice_rows(x, i, min(i + chunk, n)), level))
            on_ready(i, min(i + chunk, n), parts[-1])
        return parts[0] if len(parts) == 1 else concat_rows(parts)

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
            proposals = self.model.propose(x, prediction, level, generators, num_candidates)
        else:
            proposals = concat_rows([self.model.propose(slice_rows(x, i, min(i + rows, n)),
                                                        slice_rows(prediction, i, min(i + rows, n)), level,
                                                        generators[i: i + rows], num_candidates)
                                     for i in range(0, n, rows)])
        observer = _step_observer.get()
        if observer is not None:
            observer(level + 1, self.model.num_steps)
        return proposals

    def guided_denoise(self, x: State, level: int, guidance: Callable[[torch.Tensor], torch.Tensor], scale: float,
                       chunk_size: int | None = None) -> Prediction:
        """``model.guided_prediction`` in chunks of ``chunk_size`` rows (DPS), counting one denoiser call and
        one reward gradient per row."""
        n = batch_size(x)
        self.stats.denoiser_calls += n
        self.stats.gradient_calls += n
        return map_chunked(lambda rows: self.model.guided_prediction(rows, level, guidance, scale), x, chunk_size)

    def evaluate_value(self, network: Callable[[State], torch.Tensor], inputs: State, rows: int) -> torch.Tensor:
        """``network`` on ``inputs`` in chunks of ``chunk_size`` rows, counting ``rows`` value-network calls."""
        self.stats.value_calls += rows
        return map_chunked(network, inputs, self.chunk_size)

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
        cache = {} if self.cache is None or distinct is samples else self.cache
        todo = [s for s in distinct if s not in cache] if cache else distinct
        parts = [self.reward.evaluate(todo[i: i + step]) for i in range(0, len(todo), step)]
        values = torch.cat([p.values for p in parts]) if parts else torch.empty(0)
        self.count_rewards(len(todo), parts)
        if distinct is samples:
            return values
        cache.update(zip(todo, values.tolist()))
        return torch.tensor([cache[s] for s in samples], dtype=torch.float32)

    def count_rewards(self, n: int, parts: Sequence[Scores]) -> None:
        """Count ``n`` samples scored, with the failures and errors of the reward's ``parts``."""
        self.stats.reward_calls += n
        for part in parts:
            self.stats.reward_failures += part.failures
            self.reward_errors += part.errors
            for cause, count in part.causes.items():
                self.reward_failure_causes[cause] = self.reward_failure_causes.get(cause, 0) + count
            self.last_reward_error = part.last_error or self.last_reward_error

    @property
    def scores_in_background(self) -> bool:
        """Whether the reward scores decoded samples in worker processes (see :meth:`score_stream`)."""
        return self.cache is not None and not (self._direct_scoring and self.reward.fn.reads_states)

    def score_stream(self) -> "ScoreStream":
        return ScoreStream(self)

    def _score_states(self, x0: State) -> torch.Tensor | None:
        """The reward's ``score_states`` on x0 in chunks (each distinct row of a token tensor once), or None."""
        if not self._direct_scoring or not self.reward.fn.reads_states:
            return None
        tokens = isinstance(x0, torch.Tensor) and not x0.is_floating_point()
        first, inverse = distinct_rows(x0) if tokens else (None, None)
        rows = x0[first] if tokens else x0
        n, step = batch_size(rows), self.chunk_size or batch_size(rows)
        parts: list[Scores] = []
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
        self.count_rewards(n, parts)
        values = torch.cat([p.values for p in parts])
        return values if inverse is None else values[inverse.to(values.device)]


class ScoreStream:
    """Rewards of clean states given chunk by chunk: each chunk is decoded and its new samples are handed to
    the reward's worker processes at once (:meth:`GuardedReward.submit`), so that scoring overlaps whatever the
    caller does next; :meth:`result` waits and gives what :meth:`Run.score` gives on all the states."""

    def __init__(self, run: Run) -> None:
        self.run, self.samples, self.pending, self.submitted = run, [], [], {}

    def add(self, x0: State) -> None:
        samples = self.run.decode(x0)
        try:
            new = [s for s in dict.fromkeys(samples) if s not in self.run.cache and s not in self.submitted]
            self.submitted.update(dict.fromkeys(new))
        except TypeError:  # unhashable samples: every one is scored
            new = samples
        if new:
            self.pending.append((new, self.run.reward.submit(new)))
        self.samples += samples

    def result(self) -> torch.Tensor:
        scores, count = self.run.cache, 0
        values, parts = [], []
        for new, pending in self.pending:
            got = pending()
            parts.append(got)
            count += len(new)
            try:
                scores.update(zip(new, got.values.tolist()))
            except TypeError:
                values.append(got.values)
        self.run.count_rewards(count, parts)
        if values:  # unhashable samples, in order
            return torch.cat(values)
        return torch.tensor([scores[s] for s in self.samples], dtype=torch.float32)


class Candidates:
    """States at one level whose denoiser output is computed once, on first use.

    ``generators`` (one per row; rows of one sample share their sample's generator) drive the draws
    of values that sample (:meth:`x0_samples`).
    """

    def __init__(self, run: Run, x: State, level: int, parent: tuple[State, Prediction] | None = None,
                 prediction: Prediction | None = None, generators: Sequence[torch.Generator] | None = None) -> None:
        self.run = run
        self.x = x
        self.level = level
        self._parent = parent
        self._prediction = prediction
        self.generators = None if generators is None else list(generators)

    @property
    def is_clean(self) -> bool:
        return self.level == self.run.model.num_steps

    @property
    def prediction(self) -> Prediction:
        if self._prediction is None:
            self._prediction = self.run.denoise(self.x, self.level, reuse=self._parent)
        return self._prediction

    def x0_hat_rewards(self) -> torch.Tensor:
        """r(x0_hat) of every row (:meth:`Run.score` of :meth:`x0_hat`). With a reward that scores in worker
        processes and a prediction not made yet, each chunk's x0_hat goes to the workers as soon as the
        denoiser has made it, while the denoiser goes on with the next chunk (the same values)."""
        run = self.run
        if self._prediction is not None or self.is_clean or not run.scores_in_background:
            return run.score(self.x0_hat())
        stream, model = run.score_stream(), run.model

        def on_ready(start: int, stop: int, prediction: Prediction) -> None:
            stream.add(model.x0_hat(slice_rows(self.x, start, stop), prediction, self.level))

        self._prediction = run.denoise(self.x, self.level, reuse=self._parent, on_ready=on_ready)
        return stream.result()

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

    def x0_samples(self, num_samples: int, num_steps: int = 1) -> State:
        """``num_samples`` draws of x_0 ~ p(x_0 | x_k) per row (rows b*n .. b*n+n-1 are row b's), by at most
        ``num_steps`` stochastic denoising steps (:meth:`DiffusionModel.x0_samples`); every step after the
        first is one denoiser call per draw, counted. Clean rows are their own draws."""
        if self.is_clean:
            return repeat_rows(self.x, num_samples)
        if self.generators is None:
            raise ValueError("these candidates carry no generators: a value that samples x_0 needs a decoder that "
                             "passes each row's generator to its Candidates")
        steps = min(num_steps, self.run.model.num_steps - self.level)
        self.run.stats.denoiser_calls += batch_size(self.x) * num_samples * (steps - 1)
        n = batch_size(self.x)
        step = max((self.run.chunk_size or n * num_samples) // num_samples, 1)  # rows per call, draws included
        return concat_rows([self.run.model.x0_samples(
            slice_rows(self.x, i, min(i + step, n)), slice_rows(self.prediction, i, min(i + step, n)), self.level,
            self.generators[i: i + step], num_samples, steps) for i in range(0, n, step)])

    def time(self) -> torch.Tensor:
        """Each row's diffusion time, on the state's device."""
        return torch.full((batch_size(self.x),), self.run.model.time(self.level), device=state_device(self.x))

    def take(self, index: torch.Tensor) -> "Candidates":
        """The chosen rows, keeping their prediction if it was already computed."""
        parent = None if self._parent is None else (index_rows(self._parent[0], index), index_rows(self._parent[1], index))
        pred = None if self._prediction is None else index_rows(self._prediction, index)
        generators = None if self.generators is None else [self.generators[i] for i in index.tolist()]
        return Candidates(self.run, index_rows(self.x, index), self.level, parent, pred, generators)

