"""Rewards: batched Python callables on decoded samples, made safe for long runs."""
from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_map

from .deadline import CallInterrupted, CallTimedOut, TimedCalls
from .precision import as_float32, float32_scoring
from .state import batch_size

log = logging.getLogger(__name__)

#: a plain batched reward function: decoded samples in, one float per sample out (None or NaN: cannot score)
RewardCallable = Callable[[Sequence[Any]], Sequence[float]]

class Reward(ABC):
    """A reward: subclass it (configs name subclasses by ``class_path``), or pass a plain batched function.

    ``__call__`` takes a list of decoded samples and returns one float per sample (None or NaN: cannot score
    it); it need not be differentiable. The other methods are optional capabilities with defaults, which a
    subclass overrides when it has them:

    - :meth:`score_states`: score the model's clean states directly, on its device (SVDD-PM's hot path);
    - :meth:`submit`: start scoring in the background (worker processes) and return at once;
    - :meth:`relaxed`: a differentiable relaxation, for DPS;
    - :meth:`to`: move the reward's networks to the run's device; :meth:`close`: stop its workers;
    - :meth:`check_model`: refuse, before any work, a model whose samples it cannot read;
    - ``name`` and ``unit``: how outputs and plots label it.
    """

    name: str = "reward"
    #: what the values measure, shown beside the name on plots (e.g. "kcal/mol")
    unit: str | None = None

    @abstractmethod
    def __call__(self, samples: Sequence[Any]) -> Sequence[float]: ...

    def score_states(self, model: Any, x0: Any) -> torch.Tensor | None:
        """The scores of clean states ``x0`` of ``model`` read directly, on the model's device (e.g. an oracle
        network on the model's own tokens, an image reward on the model's decoded image batch), skipping the
        decoding to samples; None when it cannot read that model's states (the default). It must give what
        ``__call__`` gives on ``model.decode(x0)`` (NaN for a sample it cannot score)."""
        return None

    def submit(self, samples: Sequence[Any]) -> Callable[[], Sequence[float]] | None:
        """Start scoring ``samples`` in the background and return at once a callable that waits for the
        scores (what ``__call__`` gives); None (the default): the reward scores when called."""
        return None

    def relaxed(self, x: Any) -> torch.Tensor:
        """Scores of relaxed clean states (e.g. one-hot probabilities, images in [0, 1]), differentiable in
        them, for DPS; the default refuses."""
        raise TypeError(f"reward {self.name} is not differentiable: it has no relaxed(x) method for DPS")

    def to(self, device: torch.device | str) -> "Reward":
        """Move the networks the reward runs to ``device`` (the default holds none)."""
        return self

    def close(self) -> None:
        """Stop the reward's worker processes, if any (a later call starts new ones)."""

    def check_model(self, model: Any) -> None:
        """Raise ``ValueError`` (one line) when the reward cannot read ``model``'s samples; the default
        accepts every model."""

    @property
    def reads_states(self) -> bool:
        """Whether the reward has a :meth:`score_states` of its own."""
        return type(self).score_states is not Reward.score_states

    @property
    def scores_in_background(self) -> bool:
        """Whether the reward has a :meth:`submit` of its own. Its per-sample scores are exact, so a decoding
        call keeps them: a sample met again (an x0_hat repeated at a later step) is not scored again."""
        return type(self).submit is not Reward.submit

    @property
    def differentiable(self) -> bool:
        """Whether the reward has a :meth:`relaxed` of its own (DPS needs it)."""
        return type(self).relaxed is not Reward.relaxed


class FunctionReward(Reward):
    """A plain batched function as a reward: ``function: mypackage.module.my_reward`` in a config.

    Args:
        function: a batched function, samples in and one float per sample out (``None`` or NaN: cannot
            score), by its import path.
        name: the reward's name in outputs (default: the function's name).
    """

    def __init__(self, function: RewardCallable, name: str | None = None) -> None:
        if not callable(function):
            raise TypeError(f"reward: expected a Reward or a batched callable, got {type(function).__name__}")
        self.function = function
        self.name = name or getattr(function, "__name__", type(function).__name__)

    def __call__(self, samples: Sequence[Any]) -> Sequence[float]:
        return self.function(samples)


#: seconds a reward call may take before it is abandoned (per batched call, and per sample when retried)
DEFAULT_TIMEOUT = 600.0
#: why a sample got the floor: the function raised, ran past its time, or gave None / NaN / a non-number
FAILURE_CAUSES = ("raised", "timeout", "nan")


class _Unscored(NamedTuple):
    cause: str


@dataclass
class Scores:
    """What one call of a :class:`Reward` gave: floored ``values``, how many of them were ``failures``
    (floored), the failures by cause (:data:`FAILURE_CAUSES`) and the last exception or time-out
    (``last_error``). The wrapper keeps none of these: :class:`~svdd_lightning.core.run.Run` sums them."""

    values: torch.Tensor
    failures: int = 0
    causes: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None

    @property
    def errors(self) -> int:
        """Samples on which the function raised."""
        return self.causes.get("raised", 0)


class GuardedReward:
    """How a run calls a :class:`Reward`: with a floor for the samples it cannot score, failures isolated,
    and a time limit. Internal: decoders, rollouts and metrics wrap the user's reward in one (:func:`guard`).

    A sample whose score is None or NaN, or for which ``fn`` raises or runs past
    ``timeout`` seconds, gets ``floor`` instead; when the batched call fails, the batch is scored one
    sample at a time (each within ``timeout``) so that one bad sample costs only itself. Calls run in a
    worker thread (:class:`~svdd_lightning.core.deadline.TimedCalls`): one that hangs is abandoned, and
    ``should_stop`` (e.g. "SIGTERM received") is asked while waiting. :meth:`evaluate` tells, per call, how
    many samples were floored and why (:class:`Scores`); the wrapper counts nothing itself.
    A NaN floor keeps unscored samples NaN (for evaluation columns, never for decoding).
    """

    def __init__(self, fn: Reward | RewardCallable, floor: float = 0.0,
                 name: str | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        fn = fn if isinstance(fn, Reward) else FunctionReward(fn, name=getattr(fn, "name", None))
        if math.isinf(floor):
            raise ValueError(f"reward.floor must be a finite number (or NaN to mark unscored samples), got {floor}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"reward timeout must be a positive number of seconds (or null: no limit), got {timeout}")
        self.fn = fn
        self.floor = float(floor)
        self.name = name or fn.name
        self.unit = fn.unit
        self.timeout = timeout
        self.should_stop: Callable[[], bool] | None = None
        self._worker = TimedCalls()

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with autocast off, within the time limit (:class:`CallTimedOut` past it)."""
        def scored() -> Any:
            with float32_scoring():
                return fn(*args)
        return self._worker.call(scored, timeout=self.timeout, should_stop=self.should_stop)

    def __call__(self, samples: Sequence[Any]) -> torch.Tensor:
        """The floored rewards of ``samples`` (:meth:`evaluate`'s values)."""
        return self.evaluate(samples).values

    def evaluate(self, samples: Sequence[Any]) -> Scores:
        """Score ``samples``, isolating the failing ones, and tell how many failed and why."""
        samples = list(samples)
        try:
            raw = list(self._timed(self.fn, samples))
            if len(raw) != len(samples):
                raise ValueError(f"reward {self.name} returned {len(raw)} values for {len(samples)} samples")
        except CallInterrupted:
            raise
        except Exception as err:  # isolate the failing samples
            log.warning("reward %s failed on a batch of %d (%s); scoring one by one", self.name, len(samples),
                        _describe(err, self.timeout))
            errors: list[str] = []
            raw = [self._score_one(s, errors) for s in samples]
            return self._scores(raw, errors[-1] if errors else _describe(err, self.timeout))
        return self._scores(raw)

    def _scores(self, raw: Sequence[Any], last_error: str | None = None) -> Scores:
        values = torch.tensor([self._as_float(v) for v in raw], dtype=torch.float64)
        bad = ~torch.isfinite(values)
        causes: dict[str, int] = {}
        for v, failed in zip(raw, bad.tolist()):
            if failed:
                cause = v.cause if isinstance(v, _Unscored) else "nan"
                causes[cause] = causes.get(cause, 0) + 1
        return Scores(values.masked_fill(bad, self.floor).float(), int(bad.sum()), causes, last_error)

    def submit(self, samples: Sequence[Any]) -> Callable[[], Scores]:
        """Start scoring ``samples`` and return at once: the returned callable waits for the scores and gives
        what :meth:`evaluate` gives. A function that scores in worker processes (a ``submit(samples)`` method
        returning such a callable, e.g. ViennaRNA's or RDKit's with ``processes`` > 1) then overlaps the
        caller's work, e.g. the denoiser's next chunk; other functions score now. When the background
        scoring fails or runs past ``timeout``, the samples are scored by :meth:`evaluate` (one by one where
        needed)."""
        samples = list(samples)
        pending = None
        if self.fn.scores_in_background:
            try:
                pending = self.fn.submit(samples)
            except Exception as err:
                log.warning("reward %s could not start scoring in the background (%s)", self.name, err)
        if pending is None:
            scores = self.evaluate(samples)
            return lambda: scores

        def result() -> Scores:
            try:
                raw = list(self._worker.call(pending, timeout=self.timeout, should_stop=self.should_stop))
                if len(raw) != len(samples):
                    raise ValueError(f"reward {self.name} returned {len(raw)} values for {len(samples)} samples")
            except CallInterrupted:
                raise
            except Exception as err:
                log.warning("reward %s failed in the background on %d samples (%s); scoring them here",
                            self.name, len(samples), _describe(err, self.timeout))
                return self.evaluate(samples)
            return self._scores(raw)

        return result

    def _score_one(self, sample: Any, errors: list[str]) -> Any:
        """One sample's raw score; a failure with its cause (the error appended to ``errors``) when ``fn``
        raises or runs past ``timeout``."""
        try:
            return self._timed(lambda one: self.fn(one)[0], [sample])
        except CallInterrupted:
            raise
        except Exception as err:
            errors.append(_describe(err, self.timeout))
            return _Unscored("timeout" if isinstance(err, CallTimedOut) else "raised")

    def score_states(self, model: Any, x0: Any) -> Scores | None:
        """The reward's :meth:`Reward.score_states` fast path, floored like :meth:`evaluate`, on the device it
        scored on; None when the reward has none or declines."""
        if not self.fn.reads_states:
            return None
        with float32_scoring():
            values = self.fn.score_states(model, x0)
        if values is None:
            return None
        values = values.float()
        bad = ~torch.isfinite(values)
        failures = int(bad.sum())
        return Scores(values.masked_fill(bad, self.floor), failures, {"nan": failures} if failures else {})

    @staticmethod
    def _as_float(v: Any) -> float:
        if v is None or isinstance(v, _Unscored):
            return math.nan
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    def relaxed(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The reward as a differentiable function of relaxed states, for DPS (refused, in one line, for a
        reward without :meth:`Reward.relaxed`)."""
        if not self.fn.differentiable:
            raise TypeError(f"reward {self.name} is not differentiable: it has no relaxed(x) method for DPS")
        return self.fn.relaxed


class WeightedSum(Reward):
    """sum_i w_i r_i(x) of several batched rewards; a sample any term cannot score scores NaN.

    Args:
        rewards: term name -> reward; each term is also logged on its own.
        weights: term name -> weight (a term not named here has weight 1).
    """

    def __init__(self, rewards: dict[str, Reward], weights: dict[str, float] | None = None) -> None:
        if not rewards:
            raise ValueError("WeightedSum.rewards must name at least one reward")
        weights = weights or {}
        unknown = set(weights) - set(rewards)
        if unknown:
            raise ValueError(f"WeightedSum.weights names unknown rewards {sorted(unknown)}; known: {sorted(rewards)}")
        self.rewards = {k: r if isinstance(r, Reward) else FunctionReward(r) for k, r in rewards.items()}
        self.weights = {k: float(weights.get(k, 1.0)) for k in rewards}
        self.name = "+".join(f"{self.weights[k]:g}*{k}" for k in rewards)

    def __call__(self, samples: Sequence[Any]) -> list[float]:
        total = torch.zeros(len(samples), dtype=torch.float64)
        for key, fn in self.rewards.items():
            total += self.weights[key] * torch.tensor([math.nan if v is None else float(v) for v in fn(samples)],
                                                      dtype=torch.float64)
        return total.tolist()

    @property
    def reads_states(self) -> bool:
        return all(fn.reads_states for fn in self.rewards.values())

    def score_states(self, model: Any, x0: Any) -> torch.Tensor | None:
        """The weighted sum of the terms' direct scores, when every term has them (else None)."""
        total = None
        for key, fn in self.rewards.items():
            values = fn.score_states(model, x0)
            if values is None:
                return None
            total = self.weights[key] * values.double() + (0 if total is None else total)
        return total

    def to(self, device: Any) -> "WeightedSum":
        """Move every term's networks (``DecodingModule`` does this for the run's device)."""
        for fn in self.rewards.values():
            fn.to(device)
        return self

    def close(self) -> None:
        for fn in self.rewards.values():
            fn.close()

    def check_model(self, model: Any) -> None:
        for fn in self.rewards.values():
            fn.check_model(model)


class ProxyGuided(Reward):
    """A reward paired with a differentiable proxy network, for gradient guidance (DPS).

    Decoding, selection and evaluation call ``reward`` on decoded samples; DPS follows the gradient
    of ``proxy(x, t)`` at time ``time`` on relaxed clean states (x0_hat), e.g. SVDD-MC's value network
    at t = 0, or a network regressed on the reward. ``proxy`` is a module or a checkpoint directory.

    Args:
        reward: the reward used for decoding, selection and evaluation.
        proxy: a differentiable network ``proxy(x, t)`` or its checkpoint directory; DPS follows its gradient.
        time: the diffusion time at which the proxy is called on x0_hat (0: clean).
    """

    def __init__(self, reward: Reward, proxy: Any, time: float = 0.0) -> None:
        if isinstance(proxy, str):
            from ..checkpoints import load

            proxy = load(proxy)
        reward = reward if isinstance(reward, Reward) else FunctionReward(reward)
        self.reward, self.proxy, self.time = reward, proxy.eval().requires_grad_(False), float(time)
        self.name, self.unit = reward.name, reward.unit

    def __call__(self, samples: Sequence[Any]) -> Sequence[float]:
        return self.reward(samples)

    @property
    def reads_states(self) -> bool:
        return self.reward.reads_states

    @property
    def scores_in_background(self) -> bool:
        return self.reward.scores_in_background

    def score_states(self, model: Any, x0: Any) -> torch.Tensor | None:
        return self.reward.score_states(model, x0)

    def submit(self, samples: Sequence[Any]) -> Callable[[], Sequence[float]] | None:
        return self.reward.submit(samples)

    def close(self) -> None:
        self.reward.close()

    def check_model(self, model: Any) -> None:
        self.reward.check_model(model)

    def relaxed(self, x0: Any) -> torch.Tensor:
        """The proxy's value of relaxed clean states, differentiable in them (float32, autocast off)."""
        device = tree_flatten(x0)[0][0].device
        with float32_scoring():
            return self.proxy(tree_map(as_float32, x0), torch.full((batch_size(x0),), self.time, device=device))

    def to(self, device: Any) -> "ProxyGuided":
        """Move the proxy and the reward's networks."""
        self.proxy.to(device)
        self.reward.to(device)
        return self


def _describe(err: Exception, timeout: float | None) -> str:
    """An exception in one line; a time-out names the limit and the setting."""
    if isinstance(err, CallTimedOut):
        return f"timed out after {timeout:g} s (model.reward_timeout)"
    return f"{type(err).__name__}: {err}"


def guard(reward: Reward | GuardedReward | RewardCallable,
          floor: float = 0.0) -> GuardedReward:
    """The :class:`GuardedReward` a run calls: a reward or plain batched function wrapped with ``floor``
    (a GuardedReward is returned unchanged)."""
    return reward if isinstance(reward, GuardedReward) else GuardedReward(reward, floor=floor)


def __getattr__(name: str):
    from ..renamed import module_getattr

    return module_getattr(__name__, name)
