"""SMC whose particles propose by SVDD's selection: nested importance sampling."""
from __future__ import annotations

import math

import torch

from .decoders import Decoder
from .run import Candidates, Run
from .selection import select_candidates
from .steps import condition_populations, expand, resample_populations, soft_value
from .state import State
from .value import Value


class NestedIS(Decoder):
    """Sequential Monte Carlo with SVDD proposals (nested importance sampling).

    Each condition's samples form a population of particles, as in :class:`~svdd_lightning.SMC`. At every
    step each particle x_k draws M candidates y_1 .. y_M ~ p_pre(. | x_k), keeps y_j with probability
    softmax(v(y) / alpha)_j (SVDD's soft selection), and multiplies its weight by

        (1/M) sum_i exp(v(y_i) / alpha) / exp(v(x_k) / alpha),

    v(x_k) being the value the particle had when it was selected. This pair (selection, weight) is
    properly weighted for p_pre(y | x_k) exp(v(y) / alpha) / exp(v(x_k) / alpha), so the weighted
    particles target exp(r / alpha) p_pre once clean (where v = r), whatever the value: exactly as the
    number of particles grows, for any M >= 1. The value only changes the variance (M = 1 is SMC with
    the ``difference`` potential). Populations are resampled when their effective sample size falls below
    ``ess_threshold`` x their size, and always at the end. Denoiser calls: about M per particle and level.
    ``select_every = E`` > 1 selects every E levels, as :class:`~svdd_lightning.SVDD` does: the candidates
    are E-step pretrained paths and the weights the same, with v at the selection levels only.
    """

    needs_stochastic_proposals = True

    def __init__(self, value: Value, num_candidates: int = 10, alpha: float = 1.0, ess_threshold: float = 1.0,
                 resampling: str = "multinomial", select_every: int = 1, chunk_size: int | None = None) -> None:
        super().__init__(chunk_size)
        if num_candidates < 1:
            raise ValueError(f"NestedIS.num_candidates must be >= 1, got {num_candidates}")
        if alpha <= 0:
            raise ValueError(f"NestedIS.alpha must be > 0 (the weights are exp(v / alpha)), got {alpha}")
        if not 0 < ess_threshold <= 1:
            raise ValueError(f"NestedIS.ess_threshold must be in (0, 1], got {ess_threshold}")
        if resampling not in ("multinomial", "systematic"):
            raise ValueError(f"NestedIS.resampling must be 'multinomial' or 'systematic', got {resampling!r}")
        self.value, self.num_candidates, self.alpha = value.for_alpha(alpha), num_candidates, alpha
        if select_every < 1:
            raise ValueError(f"NestedIS.select_every must be >= 1 (1 = select at every step), got {select_every}")
        self.ess_threshold, self.resampling, self.select_every = ess_threshold, resampling, select_every

    def decode_from(self, run: Run, x: State, level: int, generators: list[torch.Generator]) -> State:
        n, m, alpha = len(generators), self.num_candidates, self.alpha
        populations = condition_populations(run)
        current = Candidates(run, x, level, generators=generators)
        value = soft_value(self.value, current).double().cpu()  # v of each particle's state; weights on the host
        log_w = torch.zeros(n, dtype=torch.float64)
        for level in range(level, run.model.num_steps, self.select_every):
            # 1. SVDD's proposal: M candidates per particle, one kept with probability softmax(v / alpha)
            stop = min(level + self.select_every, run.model.num_steps)
            candidates = expand(run, current, stop, generators, m)
            values = soft_value(self.value, candidates).double().cpu().view(n, m)
            chosen = torch.zeros(n, dtype=torch.long) if m == 1 else select_candidates(values, alpha, generators)
            # 2. the nested importance weight: mean of exp(v / alpha) over the candidates over the old exp(v / alpha)
            log_w += torch.logsumexp(values / alpha, dim=1) - math.log(m) - value / alpha
            current, value = candidates.take(torch.arange(n) * m + chosen), values[torch.arange(n), chosen]
            # 3. resampling within each population
            ancestors, resampled = resample_populations(log_w, populations, generators, self.ess_threshold,
                                                        self.resampling, force=stop == run.model.num_steps)
            log_w[resampled] = 0.0
            current, value, log_w = current.take(ancestors), value[ancestors], log_w[ancestors]
        return current.x
