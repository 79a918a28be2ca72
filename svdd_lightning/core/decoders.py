"""Decoders: pretrained sampling, Best-of-N, SVDD (Algorithm 1), SMC (Algorithm 4) and DPS; beam search,
nested-IS SMC and refinement live in ``beam.py``, ``nested_is.py`` and ``refinement.py``; all are written in
the steps of ``steps.py``.

Every decoder draws one sample per generator; a sample's randomness comes only from its own
generator (SMC excepted: its particles interact through resampling across the batch).

Compute is counted in denoiser calls (NFE) per sample: pretrained sampling costs T, Best-of-N
N*T, SVDD with M candidates M*(T-1)+1 (the prior once; the M candidates of each step but the last
are denoised once, for their values, and the kept one's output is reused for its next proposal;
the last step's candidates are clean and scored by the reward), SMC T. So Best-of-N with N = M
spends the same denoiser compute as SVDD with M candidates. Masked models whose denoiser ignores
the level spend less: a row that did not change reuses its prediction (``Run.denoise``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.utils._pytree import tree_map

from .model import DiffusionModel
from .reward import Reward, RewardCallable, guard
from .run import Candidates, DecodeStats, Run
from .selection import select_candidates
from .state import State, index_rows, repeat_rows
from .steps import ancestral, condition_populations, expand, resample_populations, soft_value, spawn_generators
from .value import Value


@dataclass
class DecodeResult:
    x0: State
    samples: list
    rewards: torch.Tensor
    stats: DecodeStats
    reward_errors: int = 0  #: samples on which the reward function raised (each also a reward failure)
    last_reward_error: str | None = None
    reward_failure_causes: dict[str, int] = field(default_factory=dict)  #: floored evaluations by cause


class Decoder(ABC):
    """A sampling algorithm over a frozen :class:`DiffusionModel` and a reward."""

    #: True when a sample's output depends on the other samples decoded with it (SMC's populations).
    batch_dependent: bool = False
    #: True when the decoder needs distinct draws from one state (candidates, particles): it refuses a model
    #: whose proposals are deterministic (``DiffusionModel.stochastic_proposals``)
    needs_stochastic_proposals: bool = False

    def __init__(self, chunk_size: int | None = None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        self.chunk_size = chunk_size

    def to(self, device: torch.device | str) -> "Decoder":
        """Move the networks of the decoder's value, if it has one, to ``device`` (``DecodingModule`` calls it
        for the run's device); decoders that hold other decoders move theirs too."""
        value = getattr(self, "value", None)
        if value is not None:
            value.to(device)
        return self

    def sample(self, model: DiffusionModel, reward: Reward | RewardCallable, generators: Sequence[torch.Generator],
               indices: Sequence[int] | None = None, reward_floor: float = 0.0) -> DecodeResult:
        """One sample per generator; row b is sample ``indices[b]`` (default 0, 1, ...), which fixes its
        condition for a conditional model. A sample the reward cannot score gets ``reward_floor``."""
        indices = range(len(generators)) if indices is None else indices
        if self.needs_stochastic_proposals and not model.stochastic_proposals:
            raise ValueError(f"{type(self).__name__} needs stochastic proposals, but {type(model).__name__} proposes "
                             f"deterministically (noise level 0, the flow ODE): set the model's noise_level > 0, "
                             f"e.g. 0.7")
        if len(indices) != len(generators):
            raise ValueError(f"{len(generators)} generators for {len(indices)} sample indices")
        run = Run(model, guard(reward, reward_floor), indices, self.chunk_size)
        generators = list(generators)
        x0 = self.decode_from(run, run.initial_state(generators), 0, generators)
        samples = run.decode(x0)  # once (a VAE's decoding is costly); the reward scores these samples
        rewards = run.score(x0, samples).cpu()
        return DecodeResult(x0, samples, rewards, run.stats, run.reward_errors, run.last_reward_error,
                            dict(run.reward_failure_causes))

    @abstractmethod
    def decode_from(self, run: Run, x: State, level: int, generators: list[torch.Generator]) -> State:
        """Finish decoding the states ``x`` at ``level`` (0: the prior) to clean states, row b with
        ``generators[b]`` (refinement re-decodes re-noised designs from a level > 0)."""


class PretrainedSampling(Decoder):
    """Ancestral sampling from p_pre: the baseline every guided method is compared with.

    Args:
        chunk_size: at most this many rows per denoiser call (None: the whole batch at once).
    """

    def decode_from(self, run: Run, x: State, level: int, generators: list[torch.Generator]) -> State:
        return ancestral(run, x, generators, level=level)


class BestOfN(Decoder):
    """N independent pretrained samples per output; keep the one with the highest reward.

    Args:
        n: pretrained samples drawn per output (N); the one with the highest reward is kept.
        chunk_size: at most this many rows per denoiser call (None: the whole batch at once).
    """

    def __init__(self, n: int = 10, chunk_size: int | None = None) -> None:
        super().__init__(chunk_size)
        if n < 1:
            raise ValueError(f"BestOfN.n must be >= 1, got {n}")
        self.n = n

    def decode_from(self, run: Run, x: State, level: int, generators: list[torch.Generator]) -> State:
        children = spawn_generators(generators, self.n)
        start = run.initial_state(children) if level == 0 else repeat_rows(x, self.n)
        x0 = ancestral(run, start, children, level=level)
        rewards = run.score(x0).view(len(generators), self.n)
        best = torch.arange(len(generators), device=rewards.device) * self.n + rewards.argmax(dim=1)
        return index_rows(x0, best)


class SVDD(Decoder):
    """Soft value-based decoding (Li et al. 2024, Algorithm 1).

    At every step: draw M candidates x_{k+1} ~ p_pre(. | x_k) for the whole batch in one call,
    score them with the soft value, keep the argmax (alpha = 0) or sample from softmax(v / alpha).
    ``value`` is SVDD-PM's :class:`PosteriorMeanValue` or SVDD-MC's :class:`NetworkValue`; at the
    last step the candidates are clean and are scored with the reward itself.

    ``select_every = K > 1`` selects every K steps instead: each candidate runs K pretrained steps
    (a draw from p_pre(x_{k+K} | x_k)) before it is scored. The denoiser cost stays M per step; the
    value (for SVDD-PM, the reward) is evaluated K times less often, for rewards too slow to call at
    every step (docking, simulators).

    Args:
        value: the soft value of the candidates: ``PosteriorMeanValue`` (SVDD-PM) or ``NetworkValue``
            (SVDD-MC).
        num_candidates: M, candidates drawn from the pretrained model per sample and step (1: pretrained
            sampling).
        alpha: temperature of the selection: 0 keeps the candidate of highest value, alpha > 0 samples from
            softmax(v / alpha).
        select_every: K, steps between selections; each candidate runs K pretrained steps before it is scored.
        chunk_size: at most this many rows per denoiser call (None: the whole batch at once).
    """

    def __init__(self, value: Value, num_candidates: int = 10, alpha: float = 0.0, select_every: int = 1,
                 chunk_size: int | None = None) -> None:
        super().__init__(chunk_size)
        if num_candidates < 1:
            raise ValueError(f"SVDD.num_candidates must be >= 1, got {num_candidates}")
        if alpha < 0:
            raise ValueError(f"SVDD.alpha must be >= 0 (0 = argmax), got {alpha}")
        if select_every < 1:
            raise ValueError(f"SVDD.select_every must be >= 1 (1 = select at every step), got {select_every}")
        self.value = value.for_alpha(alpha)
        self.num_candidates = num_candidates
        self.alpha = alpha
        self.select_every = select_every
        self.needs_stochastic_proposals = num_candidates > 1

    def decode_from(self, run: Run, x: State, level: int, generators: list[torch.Generator]) -> State:
        model, m = run.model, self.num_candidates
        current = Candidates(run, x, level)
        for level in range(level, model.num_steps, self.select_every):
            # 1. M proposals per sample from the pretrained model, one batched call
            candidates = expand(run, current, min(level + self.select_every, model.num_steps), generators, m)
            if m == 1:  # nothing to select: pretrained sampling, no value calls
                chosen = torch.zeros(len(generators), dtype=torch.long)
            else:
                # 2. soft values of the candidates
                values = soft_value(self.value, candidates).view(-1, m)
                # 3. selection: argmax, or softmax(v / alpha)
                chosen = select_candidates(values, self.alpha, generators)
            current = candidates.take(torch.arange(len(generators), device=chosen.device) * m + chosen)
        return current.x


class SMC(Decoder):
    """Sequential Monte Carlo over the batch (paper, Appendix A, Algorithm 4; FK steering's potentials).

    Each condition's samples (all of them for an unconditional model) form one population of
    particles: each particle proposes from p_pre and carries a log-weight given by ``potential``:

    - ``difference`` (Algorithm 4): (v(x_k) - v(x_j)) / alpha since its last resampling at level j,
      whose product over the path targets exp(v / alpha) p_pre;
    - ``max`` / ``sum`` (FK steering, Singhal et al. 2025): the maximum / sum of v over the path so
      far, divided by alpha; they are not reset by resampling.

    A population is resampled when its effective sample size falls below ``ess_threshold`` x its size
    (1.0: every step), and always at the end; resampling never mixes conditions. A population's
    resampling uses its first sample's generator, so a particle's output depends on the whole batch
    it was decoded with.

    Args:
        value: the value of the particles (``PosteriorMeanValue`` or ``NetworkValue``).
        alpha: temperature (> 0) of the weights exp(potential / alpha).
        ess_threshold: resample a population when its effective sample size falls below this fraction of its
            size (1.0: every step).
        resampling: ``multinomial`` or ``systematic``.
        potential: ``difference`` (Algorithm 4), or FK steering's ``max`` or ``sum`` of the values along the
            path.
        chunk_size: at most this many rows per denoiser call (None: the whole batch at once).
    """

    POTENTIALS = ("difference", "max", "sum")
    batch_dependent = True
    needs_stochastic_proposals = True

    def __init__(self, value: Value, alpha: float = 1.0, ess_threshold: float = 1.0,
                 resampling: str = "multinomial", potential: str = "difference", chunk_size: int | None = None) -> None:
        super().__init__(chunk_size)
        if alpha <= 0:
            raise ValueError(f"SMC.alpha must be > 0 (the weights are exp(v / alpha)), got {alpha}")
        if not 0 < ess_threshold <= 1:
            raise ValueError(f"SMC.ess_threshold must be in (0, 1], got {ess_threshold}")
        if resampling not in ("multinomial", "systematic"):
            raise ValueError(f"SMC.resampling must be 'multinomial' or 'systematic', got {resampling!r}")
        if potential not in self.POTENTIALS:
            raise ValueError(f"SMC.potential must be one of {', '.join(self.POTENTIALS)}, got {potential!r}")
        self.value, self.alpha, self.ess_threshold = value.for_alpha(alpha), alpha, ess_threshold
        self.resampling, self.potential = resampling, potential

    def decode_from(self, run: Run, x: State, level: int, generators: list[torch.Generator]) -> State:
        model = run.model
        populations = condition_populations(run)
        current = Candidates(run, x, level, generators=generators)
        path = soft_value(self.value, current).double().cpu()  # v at the last resampling, or the path's max / sum
        for level in range(level, model.num_steps):
            proposals = run.propose(current.x, current.prediction, level, generators, 1)
            current = Candidates(run, proposals, level + 1, parent=(current.x, current.prediction),
                                 generators=generators)
            value = soft_value(self.value, current).double().cpu()  # the weights are host decisions
            if self.potential == "difference":
                log_w = (value - path) / self.alpha
            else:
                path = torch.maximum(path, value) if self.potential == "max" else path + value
                log_w = path / self.alpha
            ancestors, resampled = resample_populations(log_w, populations, generators, self.ess_threshold,
                                                        self.resampling, force=level + 1 == model.num_steps)
            if self.potential == "difference":
                path[resampled] = value[resampled]  # the survivors' weights restart from their values
            current, path = current.take(ancestors), path[ancestors]
        return current.x


class DPS(Decoder):
    """Diffusion posterior sampling: gradient guidance by a differentiable reward.

    The model tilts each denoiser output by ``scale`` x the gradient of the reward at x0_hat (for
    masked discrete models on the one-hot relaxation; ``gradient_calls`` counts the reward
    gradients). The reward must be differentiable: its callable has a ``relaxed(x)`` method on
    relaxed states.

    Args:
        scale: guidance strength: the denoiser output is tilted by scale x the reward gradient at x0_hat.
        chunk_size: at most this many rows per denoiser call (None: the whole batch at once).
    """

    def __init__(self, scale: float = 1.0, chunk_size: int | None = None) -> None:
        super().__init__(chunk_size)
        self.scale = scale

    def decode_from(self, run: Run, x: State, level: int, generators: list[torch.Generator]) -> State:
        model = run.model
        guidance = run.reward.relaxed()
        for level in range(level, model.num_steps):
            with torch.inference_mode(False), torch.enable_grad():
                prediction = run.guided_denoise(_normal_tensors(x), level, guidance, self.scale, self.chunk_size)
            x = run.propose(x, prediction, level, generators, 1)
        return x


def _normal_tensors(x: State) -> State:
    """Copies usable by autograd even when created under ``torch.inference_mode``."""
    return tree_map(lambda t: t.clone(), x)
