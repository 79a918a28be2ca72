"""Iterative refinement: re-noise a finished design with the forward process and decode it again."""
from __future__ import annotations

import torch

from .decoders import Decoder
from .run import Run
from .state import State, concat_rows, index_rows


class Refinement(Decoder):
    """Decode, then for ``rounds`` rounds: re-noise each design x_0 to level k with the forward process
    q(x_k | x_0) (``DiffusionModel.forward_noise``), decode x_k again with ``decoder`` to a proposal x_0',
    and keep it by the ``acceptance`` rule:

    - ``greedy``: keep x_0' if r(x_0') > r(x_0) (a local search; no target distribution);
    - ``metropolis``: keep x_0' with probability min(1, exp((r(x_0') - r(x_0)) / alpha)).

    The Metropolis step leaves exp(r / alpha) p_pre invariant when the re-noise / re-decode move is
    p_pre-reversible, p_pre(x_0) K(x_0 -> x_0') = p_pre(x_0') K(x_0' -> x_0). That holds when ``decoder``
    is :class:`~svdd_lightning.PretrainedSampling` and the model's reverse chain is the exact posterior of
    its forward process, p_pre(x_k | x_0) = q(x_k | x_0): the move is then a Gibbs step on the joint of
    (x_k, x_0), and the rounds form an MCMC chain that converges to exp(r / alpha) p_pre. A model whose
    denoiser is the true conditional of its samples satisfies it; a trained model does only approximately
    (a masked model's sampler masks each position with probability t_k at level k, independently of the
    tokens, as ``forward_noise`` does, but its samples depend slightly on the order tokens were unmasked
    in; on the enumerable test problem the stationary law is within 1e-3 of the target). With a guided
    ``decoder`` (SVDD, beam search) the move is not p_pre-reversible and the rule is a heuristic
    acceptance, not an exact sampler.

    Args:
        decoder: decodes the re-noised designs (any decoder: it starts from level k).
        rounds: refinement rounds (each re-noises and re-decodes every design once).
        noise_level: the fraction of the chain re-run: k = round(T (1 - noise_level)); for masked
            models the fraction of tokens re-masked.
        acceptance: ``greedy`` or ``metropolis``.
        alpha: the Metropolis temperature (> 0).
        initial: decodes the first designs from the prior (default: ``decoder``).
    """

    ACCEPTANCE = ("greedy", "metropolis")

    def __init__(self, decoder: Decoder, rounds: int = 4, noise_level: float = 0.2, acceptance: str = "greedy",
                 alpha: float = 1.0, initial: Decoder | None = None, chunk_size: int | None = None) -> None:
        super().__init__(chunk_size)
        if rounds < 0:
            raise ValueError(f"Refinement.rounds must be >= 0, got {rounds}")
        if not 0 < noise_level <= 1:
            raise ValueError(f"Refinement.noise_level must be in (0, 1] (the fraction of the chain re-run), got {noise_level}")
        if acceptance not in self.ACCEPTANCE:
            raise ValueError(f"Refinement.acceptance must be one of {', '.join(self.ACCEPTANCE)}, got {acceptance!r}")
        if alpha <= 0:
            raise ValueError(f"Refinement.alpha must be > 0, got {alpha}")
        self.decoder, self.initial = decoder, initial or decoder
        self.rounds, self.noise_level, self.acceptance, self.alpha = rounds, noise_level, acceptance, alpha

    def to(self, device: torch.device | str) -> "Refinement":
        self.decoder.to(device)
        self.initial.to(device)
        return self

    def renoise_level(self, num_steps: int) -> int:
        """The level k designs are re-noised to (at least one step is re-run)."""
        return min(max(round(num_steps * (1 - self.noise_level)), 0), num_steps - 1)

    def decode_from(self, run: Run, x: State, level: int, generators: list[torch.Generator]) -> State:
        n, k = len(generators), self.renoise_level(run.model.num_steps)
        x0 = self.initial.decode_from(run, x, level, generators)
        reward = run.score(x0).double().cpu()  # the acceptance is a host decision
        for _ in range(self.rounds):
            noisy = run.model.forward_noise(x0, k, generators)
            proposal = self.decoder.decode_from(run, noisy, k, generators)
            new = run.score(proposal).double().cpu()
            if self.acceptance == "greedy":
                accept = new > reward
            else:
                u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
                accept = u.log() < (new - reward) / self.alpha
            x0 = index_rows(concat_rows([x0, proposal]), torch.arange(n) + n * accept.long())
            reward = torch.where(accept, new, reward)
        return x0
