"""Beam search over denoising steps (TreeG's sampling-based search, Guo et al. 2025)."""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten

from .decoders import Decoder
from .steps import expand, repeat_each, soft_value
from .rollout_values import LookaheadValue
from .run import Candidates, Run
from .state import State, repeat_rows
from .value import Value


class BeamSearch(Decoder):
    """Keep A states per sample; expand each into K candidates from p_pre; keep the A best by value.

    At every level the A states of a sample (its beam) each propose K candidates x_{k+1} ~ p_pre(. | x_k),
    all in one batched call; the A x K candidates are scored by ``value`` and the A best distinct ones
    (duplicates count once, while there are enough distinct candidates) become the next beam. At the
    clean level the candidates are scored by the reward and the best one is the sample. A = 1 is SVDD
    with M = K and alpha = 0. Denoiser calls: about A x K per level, like SVDD with M = A x K and
    Best-of-N with N = A x K.

    ``lookahead = L`` > 0 scores each candidate after L more pretrained steps (:class:`LookaheadValue`;
    the candidate, not its look-ahead, is kept): L more denoiser calls per candidate and level.
    ``select_every = E`` > 1 selects every E levels, as in :class:`~svdd_lightning.SVDD`: each candidate
    runs E pretrained steps (and keeps them) before it is scored.
    """

    needs_stochastic_proposals = True

    def __init__(self, value: Value, beam_width: int = 2, num_candidates: int = 5, lookahead: int = 0,
                 select_every: int = 1, chunk_size: int | None = None) -> None:
        super().__init__(chunk_size)
        if beam_width < 1:
            raise ValueError(f"BeamSearch.beam_width must be >= 1, got {beam_width}")
        if num_candidates < 1:
            raise ValueError(f"BeamSearch.num_candidates must be >= 1, got {num_candidates}")
        if lookahead < 0:
            raise ValueError(f"BeamSearch.lookahead must be >= 0 (0 = score the candidates themselves), got {lookahead}")
        if select_every < 1:
            raise ValueError(f"BeamSearch.select_every must be >= 1 (1 = select at every step), got {select_every}")
        value = value.for_alpha(0.0)
        self.value = LookaheadValue(value, lookahead) if lookahead else value
        self.beam_width, self.num_candidates, self.lookahead = beam_width, num_candidates, lookahead
        self.select_every = select_every

    def decode_from(self, run: Run, x: State, level: int, generators: list[torch.Generator]) -> State:
        a, k, n = self.beam_width, self.num_candidates, len(generators)
        rows = repeat_each(generators, a)
        beam = Candidates(run, run.initial_state(rows) if level == 0 else repeat_rows(x, a), level)
        for level in range(level, run.model.num_steps, self.select_every):
            # 1. K proposals per beam state, A x K per sample, in one batched call
            candidates = expand(run, beam, min(level + self.select_every, run.model.num_steps), rows, k)
            # 2. their values (the reward at the clean level)
            values = soft_value(self.value, candidates).view(n, a * k)
            # 3. the A best distinct candidates of each sample; the single best at the end
            keep = 1 if candidates.is_clean else a
            best = best_distinct(values, candidates.x, keep)
            beam = candidates.take((torch.arange(n).unsqueeze(1) * a * k + best).flatten())
        return beam.x


def best_distinct(values: torch.Tensor, x: State, keep: int) -> torch.Tensor:
    """Per row of ``values`` (B, C), the ``keep`` indices of highest value, ties to the first; a candidate
    equal to a better one of its row comes after every distinct candidate (``x`` holds the B x C rows). The
    choice is made on the host (indices on the CPU), whatever device the values and states are on."""
    order = torch.sort(values.detach().cpu(), dim=1, descending=True, stable=True).indices
    if keep == 1:
        return order[:, :1]
    leaves, _ = tree_flatten(x)
    flat = torch.cat([t.reshape(t.shape[0], -1).double().cpu() for t in leaves], dim=1)
    ids = torch.unique(flat, dim=0, return_inverse=True)[1].view(values.shape)
    ranked = ids.gather(1, order)
    earlier = (ranked.unsqueeze(2) == ranked.unsqueeze(1)).tril(diagonal=-1).any(dim=2)  # equal to a better one
    return order.gather(1, torch.sort(earlier.long(), dim=1, stable=True).indices)[:, :keep]
