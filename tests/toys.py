"""Test fixtures: toy diffusion models whose exact laws are known.

1. A tiny masked (MDLM-style) diffusion over 3 symbols, length 3, 3 steps, small enough to
   enumerate: every state at every level, the exact pretrained transition kernels, hence the exact
   p_pre(x_0) and the exact soft value v_k(x) = alpha log E_pre[exp(r(x_0) / alpha) | x_k].
2. A 2-D Gaussian-mixture DDPM whose noise prediction is analytic (the noised marginal of a GMM is
   a GMM), for the continuous-state decoders and DPS.
3. A 2-D Gaussian-mixture rectified flow whose velocity is analytic, and for both continuous toys the
   exact soft value of a linear reward and the reward-tilted mixture they should sample.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from svdd_lightning.core.model import DiffusionModel
from svdd_lightning.core.reward import Reward
from svdd_lightning.core.run import Candidates
from svdd_lightning.core.value import Value
from svdd_lightning.diffusion.backbones import embed_tokens
from svdd_lightning.diffusion.flow import RectifiedFlow
from svdd_lightning.diffusion.masked import MaskedDiffusion


def generators(seeds: Sequence[int] | int, offset: int = 0) -> list[torch.Generator]:
    """One generator per seed (or seeds offset .. offset + n - 1 for an int n)."""
    if isinstance(seeds, int):
        seeds = range(offset, offset + seeds)
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


# ------------------------------------------------------------------------------------------------
# 1. enumerable masked diffusion
# ------------------------------------------------------------------------------------------------
class TinyBackbone(nn.Module):
    """A fixed random denoiser: embedding + MLP over the flattened sequence (positions interact).

    Maps tokens (N, L) or a one-hot relaxation (N, L, V+1) and sigma (ignored) to logits (N, L, V+1).
    Its weights are drawn from ``seed`` alone (the global RNG is untouched).
    """

    def __init__(self, vocab_size: int, seq_len: int, embed_dim: int = 4, hidden: int = 16, seed: int = 0,
                 logit_scale: float = 1.0) -> None:
        super().__init__()
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.embedding = nn.Embedding(vocab_size + 1, embed_dim)
        self.hidden = nn.Linear(seq_len * embed_dim, hidden)
        self.out = nn.Linear(hidden, seq_len * (vocab_size + 1))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        self.logit_scale = logit_scale
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h = embed_tokens(x, self.embedding).flatten(1)
        logits = self.out(torch.tanh(self.hidden(h))) * self.logit_scale
        return logits.view(-1, self.seq_len, self.vocab_size + 1)


def make_masked_toy(alphabet: str = "ABC", seq_len: int = 3, num_steps: int = 3, seed: int = 0,
                    logit_scale: float = 0.5) -> MaskedDiffusion:
    backbone = TinyBackbone(len(alphabet), seq_len, seed=seed, logit_scale=logit_scale)
    return MaskedDiffusion(backbone=backbone, alphabet=alphabet, seq_len=seq_len, num_steps=num_steps).eval()


class TableReward:
    """A batched reward given by a table over decoded sequences."""

    def __init__(self, table: dict[str, float], name: str = "table") -> None:
        self.table = dict(table)
        self.name = name

    def __call__(self, samples: Sequence[str]) -> list[float]:
        return [self.table[s] for s in samples]


class ExactMaskedChain:
    """Exact law of a small :class:`MaskedDiffusion`'s T-step sampler, by enumeration.

    ``states`` (S, L) holds every sequence over {0 .. V-1, mask}, S = (V+1)^L, ordered so that the
    index of a state is its base-(V+1) number (first position most significant). ``kernels[k]``
    (S, S) is p_pre(x_{k+1} = y | x_k = x), computed from the model's own ``denoise`` output and its
    transition rule: each masked position independently stays masked with probability s/t and is
    otherwise drawn from p(x_0 | x_t), with t = t_k, s = t_{k+1}; unmasked positions stay.
    """

    def __init__(self, model: MaskedDiffusion) -> None:
        self.model = model
        v, length, steps = model.vocab_size, model.seq_len, model.num_steps
        self.base = v + 1
        self.states = torch.tensor(list(itertools.product(range(v + 1), repeat=length)), dtype=torch.long)
        self.clean = (self.states != model.mask_id).all(dim=1)  # (S,) bool
        self.clean_index = self.clean.nonzero().squeeze(1)  # state indices of the V^L clean sequences
        self.sequences = model.decode(self.states[self.clean_index])  # their strings
        self.powers = self.base ** torch.arange(length - 1, -1, -1)
        self.kernels = [self._kernel(k) for k in range(steps)]
        self.marginals = [torch.zeros(len(self.states), dtype=torch.float64)]
        self.marginals[0][self.index(torch.full((1, length), model.mask_id))] = 1.0
        for kernel in self.kernels:
            self.marginals.append(self.marginals[-1] @ kernel)
        self.p_pre = self.marginals[-1][self.clean_index]  # over ``sequences``

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """State index of each row of a token tensor (N, L)."""
        return (x.long() * self.powers).sum(dim=1)

    @torch.inference_mode()
    def _kernel(self, level: int) -> torch.Tensor:
        model, mask = self.model, self.model.mask_id
        t, s = model.level_time(level), model.level_time(level + 1)
        probs = model.denoise(self.states, level).double().exp()  # (S, L, V); carry-over rows one-hot
        stay = s / t
        # per-position law of the next token over {0 .. V-1, mask}
        q = torch.cat([(1 - stay) * probs, torch.full(probs.shape[:2] + (1,), stay, dtype=torch.float64)], dim=-1)
        unmasked = self.states != mask
        keep = torch.nn.functional.one_hot(self.states, self.base).double()
        q = torch.where(unmasked.unsqueeze(-1), keep, q)  # (S, L, V+1)
        kernel = torch.ones(len(self.states), len(self.states), dtype=torch.float64)
        for i in range(self.states.shape[1]):
            kernel *= q[:, i, :][:, self.states[:, i]]
        return kernel / kernel.sum(dim=1, keepdim=True)  # float32 denoiser output: rows sum to 1 +- 1e-7

    # --- rewards, values and targets ----------------------------------------------------------------
    def reward_vector(self, reward: Callable[[list[str]], Sequence[float]]) -> torch.Tensor:
        """r over ``sequences``."""
        return torch.tensor(list(reward(self.sequences)), dtype=torch.float64)

    def soft_values(self, reward: Callable[[list[str]], Sequence[float]], alpha: float) -> list[torch.Tensor]:
        """v_k over all states, k = 0 .. T, by backward recursion.

        alpha > 0: v_k(x) = alpha log sum_y p_k(y | x) exp(v_{k+1}(y) / alpha), v_T = r;
        alpha = 0: its limit, v_k(x) = max over reachable y of v_{k+1}(y). Unreachable clean-level
        states (still masked at level T) get -inf.
        """
        r = self.reward_vector(reward)
        v = torch.full((len(self.states),), -math.inf, dtype=torch.float64)
        v[self.clean_index] = r
        values = [v]
        for kernel in reversed(self.kernels):
            log_k = kernel.log()
            if alpha > 0:
                v = alpha * torch.logsumexp(log_k + values[0] / alpha, dim=1)
            else:
                v = torch.where(kernel > 0, values[0].expand_as(kernel), -math.inf).max(dim=1).values
            values.insert(0, v)
        return values

    def target(self, reward: Callable[[list[str]], Sequence[float]], alpha: float) -> torch.Tensor:
        """p(x) proportional to exp(r(x) / alpha) p_pre(x) over ``sequences``."""
        log_p = self.p_pre.log() + self.reward_vector(reward) / alpha
        return torch.softmax(log_p, dim=0)

    def optimal_policy_law(self, values: list[torch.Tensor], alpha: float) -> torch.Tensor:
        """Law of x_0 under p*_k(y | x) = p_pre,k(y | x) exp((v_{k+1}(y) - v_k(x)) / alpha) (Theorem 1)."""
        m = self.marginals[0]
        for k, kernel in enumerate(self.kernels):  # v_k is finite for k < T; v_T = -inf off the clean states
            m = m @ (kernel * torch.exp((values[k + 1].unsqueeze(0) - values[k].unsqueeze(1)) / alpha))
        return m[self.clean_index]

    def svdd_law(self, values: list[torch.Tensor], alpha: float, num_candidates: int) -> torch.Tensor:
        """Exact law of x_0 under SVDD with M = ``num_candidates`` and selection softmax(v / alpha).

        From x, M candidates are drawn i.i.d. from p = p_pre,k(. | x) and y is kept with probability
        w_y / sum_j w_{c_j}, w = exp(v_{k+1} / alpha). Using 1/a = int_0^inf exp(-t a) dt,
        P(keep y) = M p_y w_y int_0^inf exp(-t w_y) phi(t)^(M-1) dt with phi(t) = sum_z p_z exp(-t w_z).
        M -> infinity gives the optimal policy (Theorem 1); M = 1 gives p_pre.
        """
        from scipy import integrate

        m = self.marginals[0].numpy()
        for k, kernel in enumerate(self.kernels):
            kernel, v = kernel.numpy(), values[k + 1].numpy()
            policy = np.zeros_like(kernel)
            for x in np.nonzero(m > 0)[0]:
                ys = np.nonzero(kernel[x] > 0)[0]
                p, w = kernel[x, ys], np.exp((v[ys] - v[ys].max()) / alpha)  # the law is scale-free in w

                def integrand(t, p=p, w=w):
                    return np.exp(-t * w) * (p @ np.exp(-t * w)) ** (num_candidates - 1)

                integral, _ = integrate.quad_vec(integrand, 0, np.inf, epsabs=1e-13, epsrel=1e-10)
                policy[x, ys] = num_candidates * p * w * integral
            m = m @ policy
        return torch.from_numpy(m[self.clean_index.numpy()])

    def completion_laws(self, level: int, draws: str) -> torch.Tensor:
        """(S, C): the law over the clean ``sequences`` that a value draws x_0 from, for every state at ``level``.

        ``exact``: p_pre(x_0 | x_k), the rest of the chain. ``factorised``: every masked token drawn
        independently from the denoiser output at x_k (what one step of ``x0_samples`` does)."""
        if draws == "exact":
            law = torch.eye(len(self.states), dtype=torch.float64)
            for kernel in self.kernels[level:]:
                law = law @ kernel
            return law[:, self.clean_index]
        with torch.inference_mode():
            probs = self.model.denoise(self.states, level).double().exp()  # (S, L, V), one-hot where unmasked
        clean = self.states[self.clean_index]  # (C, L)
        law = torch.ones(len(self.states), len(clean), dtype=torch.float64)
        for i in range(clean.shape[1]):
            law *= probs[:, i, :][:, clean[:, i]]
        return law

    def sampled_value_svdd_law(self, reward: Callable[[list[str]], Sequence[float]], alpha: float,
                               num_candidates: int, num_samples: int, draws: str = "exact") -> torch.Tensor:
        """Exact law of x_0 under SVDD with M candidates selected by softmax(v / alpha), where each candidate's
        v = alpha log (1/K) sum_j exp(r(x0_j) / alpha) from K independent draws x0_j of ``completion_laws``.

        With w = exp(r / alpha) and the estimate w^ = (1/K) sum_j w(x0_j), P(keep y | x) is
        M p(y | x) int_0^inf E[w^_y exp(-t w^_y)] phi_x(t)^(M-1) dt, phi_x(t) = sum_z p(z | x) E[exp(-t w^_z)],
        and for K draws E[exp(-t w^)] = psi(t/K)^K, E[w^ exp(-t w^)] = psi(t/K)^(K-1) chi(t/K), with
        psi(s) = E[exp(-s w)], chi(s) = E[w exp(-s w)] under the draw law (a point mass for clean y).
        """
        from scipy import integrate

        r = self.reward_vector(reward).numpy()
        w = np.exp((r - r.max()) / alpha)  # the law is scale-free in w
        m, k = num_candidates, num_samples
        law = self.marginals[0].numpy()
        for level, kernel in enumerate(self.kernels):
            kernel, draw = kernel.numpy(), self.completion_laws(level + 1, draws).numpy()
            rows = np.nonzero(law > 0)[0]

            def integrand(t, kernel=kernel[rows], draw=draw):
                psi, chi = draw @ np.exp(-t / k * w), draw @ (w * np.exp(-t / k * w))
                phi = kernel @ psi ** k
                return (kernel * (psi ** (k - 1) * chi)[None, :] * phi[:, None] ** (m - 1)).ravel()

            integral, _ = integrate.quad_vec(integrand, 0, np.inf, epsabs=1e-13, epsrel=1e-10)
            policy = np.zeros_like(kernel)
            policy[rows] = m * integral.reshape(len(rows), -1)
            law = law @ policy
        return torch.from_numpy(law[self.clean_index.numpy()])

    def renoise_kernel(self, level: int) -> torch.Tensor:
        """(C, C): re-mask each token of a clean sequence independently with probability t_k (the forward
        process), then finish with the pretrained chain from level k."""
        t = self.model.level_time(level)
        clean, mask = self.states[self.clean_index], self.model.mask_id
        keep = self.states.unsqueeze(0) == clean.unsqueeze(1)  # (C, S, L): position kept as in the clean row
        masked = (self.states == mask).unsqueeze(0)
        q = torch.where(keep, 1 - t, torch.where(masked, t, 0.0)).double().prod(dim=-1)  # (C, S) = q(x_k | x_0)
        return q @ self.completion_laws(level, "exact")

    def metropolis_kernel(self, reward: Callable[[list[str]], Sequence[float]], alpha: float, level: int) -> torch.Tensor:
        """(C, C): one refinement round, re-noise to ``level`` and re-decode, accepted with probability
        min(1, exp((r' - r) / alpha))."""
        r = self.reward_vector(reward)
        accept = torch.exp(((r.unsqueeze(0) - r.unsqueeze(1)) / alpha).clamp(max=0))
        kernel = self.renoise_kernel(level) * accept
        return kernel + torch.diag(1 - kernel.sum(dim=1))

    def counts(self, x0: torch.Tensor) -> torch.Tensor:
        """Histogram of clean token rows (N, L) over ``sequences``."""
        position = torch.full((len(self.states),), -1, dtype=torch.long)
        position[self.clean_index] = torch.arange(len(self.clean_index))
        idx = position[self.index(x0)]
        assert bool((idx >= 0).all()), "a sample still holds a masked token"
        return torch.bincount(idx, minlength=len(self.clean_index))


class ExactValue(Value):
    """The exact soft value v_k of a :class:`ExactMaskedChain`, looked up for each candidate row."""

    def __init__(self, chain: ExactMaskedChain, values: list[torch.Tensor]) -> None:
        self.chain = chain
        self.values = values

    def __call__(self, candidates: Candidates) -> torch.Tensor:
        candidates.run.stats.value_calls += candidates.x.shape[0]
        return self.values[candidates.level][self.chain.index(candidates.x)]


# ------------------------------------------------------------------------------------------------
# 2. Gaussian-mixture DDPM in 2-D with the exact noise prediction
# ------------------------------------------------------------------------------------------------
class GaussianMixtureDDPM(DiffusionModel):
    """A variance-preserving DDPM whose data law is a 2-D Gaussian mixture.

    Data: sum_j w_j N(mu_j, sigma0^2 I). Forward process q(x_i | x_0) = N(sqrt(abar_i) x_0,
    (1 - abar_i) I), i = 1 .. T, linear betas. The noised marginal is the mixture
    sum_j w_j N(sqrt(abar_i) mu_j, (abar_i sigma0^2 + 1 - abar_i) I), so the optimal noise
    prediction eps(x, i) = -sqrt(1 - abar_i) grad log q_i(x) is analytic. Level k is diffusion
    index i = T - k (level 0: x_T ~ N(0, I); level T: clean). A step is DDPM's ancestral update
    with the posterior variance beta~_i (zero on the last step). ``num_conditions`` as
    :class:`GaussianMixtureFlow`'s (independent SMC populations; the law ignores the condition).
    """

    denoiser_uses_level = True

    def __init__(self, means: Sequence[Sequence[float]] = ((-2.0, 0.0), (2.0, 0.0), (0.0, 2.5)),
                 weights: Sequence[float] = (0.5, 0.3, 0.2), sigma0: float = 0.4, num_steps: int = 50,
                 beta_start: float = 1e-3, beta_end: float = 0.2, num_conditions: int = 1) -> None:
        super().__init__()
        self.num_steps, self.num_conditions = num_steps, num_conditions
        self.register_buffer("means", torch.tensor(means, dtype=torch.float64))
        w = torch.tensor(weights, dtype=torch.float64)
        self.register_buffer("log_weights", (w / w.sum()).log())
        self.sigma0 = sigma0
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        abar = torch.cumprod(1 - betas, 0)
        # index i = 1 .. T lives at position i (position 0: clean, abar = 1)
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        self.abar = torch.cat([torch.ones(1, dtype=torch.float64), abar])

    # --- the data law -----------------------------------------------------------------------------
    @property
    def data_mean(self) -> torch.Tensor:
        return (self.log_weights.exp().unsqueeze(1) * self.means).sum(0)

    def index(self, level: int) -> int:
        return self.num_steps - level

    def coefficients(self, level: int) -> tuple[float, float]:
        """(a, b) of x_i = a x_0 + b eps at ``level``: (sqrt(abar_i), sqrt(1 - abar_i))."""
        abar = float(self.abar[self.index(level)])
        return math.sqrt(abar), math.sqrt(1 - abar)

    def eps(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Exact E[eps | x_i] for the mixture (differentiable in x)."""
        i = self.index(level)
        abar = float(self.abar[i])
        var = abar * self.sigma0 ** 2 + 1 - abar
        centres = math.sqrt(abar) * self.means.to(x.dtype)  # (J, 2)
        diff = x.unsqueeze(1) - centres.unsqueeze(0)  # (N, J, 2)
        logits = self.log_weights.to(x.dtype) - (diff ** 2).sum(-1) / (2 * var)
        resp = torch.softmax(logits, dim=1)  # (N, J)
        score = -(resp.unsqueeze(-1) * diff).sum(1) / var
        return -math.sqrt(1 - abar) * score

    # --- DiffusionModel ---------------------------------------------------------------------------
    def initial_state(self, generators: Sequence[torch.Generator], conditions: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([torch.randn(2, generator=g, dtype=torch.float64) for g in generators])

    def denoise(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return self.eps(x, level)

    def propose(self, x: torch.Tensor, prediction: torch.Tensor, level: int,
                generators: Sequence[torch.Generator], num_candidates: int) -> torch.Tensor:
        i, m = self.index(level), num_candidates
        beta, abar = float(self.betas[i]), float(self.abar[i])
        abar_prev = float(self.abar[i - 1])
        mean = (x - beta / math.sqrt(1 - abar) * prediction) / math.sqrt(1 - beta)
        std = math.sqrt(beta * (1 - abar_prev) / (1 - abar))  # posterior std; 0 when i = 1
        z = torch.stack([torch.randn((m, 2), generator=g, dtype=torch.float64) for g in generators])
        return mean.repeat_interleave(m, dim=0) + std * z.view(-1, 2)

    def x0_hat(self, x: torch.Tensor, prediction: torch.Tensor, level: int) -> torch.Tensor:
        """Tweedie: E[x_0 | x_i] = (x_i - sqrt(1 - abar_i) eps) / sqrt(abar_i)."""
        abar = float(self.abar[self.index(level)])
        return (x - math.sqrt(1 - abar) * prediction) / math.sqrt(abar)

    def x0_samples(self, x: torch.Tensor, prediction: torch.Tensor, level: int, generators: Sequence[torch.Generator],
                   num_samples: int, num_steps: int) -> torch.Tensor:
        """DDPM-posterior steps on an even subgrid of the remaining indices; the last returns Tweedie's x_0."""
        x, eps = x.repeat_interleave(num_samples, 0), prediction.repeat_interleave(num_samples, 0)
        rows = [g for g in generators for _ in range(num_samples)]
        levels = torch.linspace(level, self.num_steps, num_steps + 1).round().long().tolist()
        for j in range(num_steps):
            if j:
                eps = self.eps(x, levels[j])
            x0 = self.x0_hat(x, eps, levels[j])
            if j + 1 == num_steps:
                return x0
            a, a_next = float(self.abar[self.index(levels[j])]), float(self.abar[self.index(levels[j + 1])])
            ratio = a / a_next
            mean = math.sqrt(a_next) * x0 + math.sqrt(ratio) * (1 - a_next) / (1 - a) * (x - math.sqrt(a) * x0)
            z = torch.stack([torch.randn(2, generator=g, dtype=torch.float64) for g in rows])
            x = mean + math.sqrt((1 - a_next) / (1 - a) * (1 - ratio)) * z

    def forward_noise(self, x0: torch.Tensor, level: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        abar = float(self.abar[self.index(level)])
        z = torch.stack([torch.randn(2, generator=g, dtype=torch.float64) for g in generators])
        return math.sqrt(abar) * x0 + math.sqrt(1 - abar) * z

    def decode(self, x0: torch.Tensor) -> list:
        return x0.tolist()

    def guided_prediction(self, x: torch.Tensor, level: int, guidance: Callable[[torch.Tensor], torch.Tensor],
                          scale: float) -> torch.Tensor:
        """Classifier-guidance form of DPS: eps - scale sqrt(1 - abar) grad_x guidance(x0_hat(x))."""
        x = x.detach().requires_grad_(True)
        eps = self.eps(x, level)
        value = guidance(self.x0_hat(x, eps, level)).sum()
        (grad,) = torch.autograd.grad(value, x)
        abar = float(self.abar[self.index(level)])
        return (eps - scale * math.sqrt(1 - abar) * grad).detach()


class FirstCoordinate(Reward):
    """r(x) = x[0] on decoded 2-D points, differentiable for DPS through ``relaxed``."""

    name = "first_coordinate"

    def __call__(self, samples: Sequence[Sequence[float]]) -> list[float]:
        return [float(s[0]) for s in samples]

    def relaxed(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 0]


# ------------------------------------------------------------------------------------------------
# 3. Gaussian-mixture rectified flow, exact soft values of a linear reward, the tilted mixture
# ------------------------------------------------------------------------------------------------
def mixture_posterior(x: torch.Tensor, means: torch.Tensor, log_weights: torch.Tensor, sigma0: float, a: float,
                      b: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The law of x_0 given x = a x_0 + b eps, x_0 ~ sum_j w_j N(mu_j, sigma0^2 I), eps ~ N(0, I).

    Component j: x ~ N(a mu_j, s^2 I), s^2 = a^2 sigma0^2 + b^2. Returns the responsibilities (N, J),
    E[x_0 | x, j] = mu_j + a sigma0^2 / s^2 (x - a mu_j) (N, J, D), E[eps | x, j] = b / s^2 (x - a mu_j)
    (N, J, D) and Var[x_0 | x, j] = sigma0^2 b^2 / s^2 (per coordinate)."""
    var = a ** 2 * sigma0 ** 2 + b ** 2
    diff = x.unsqueeze(1) - a * means.to(x.dtype)  # (N, J, D)
    resp = torch.softmax(log_weights.to(x.dtype) - (diff ** 2).sum(-1) / (2 * var), dim=1)
    return resp, means.to(x.dtype) + a * sigma0 ** 2 / var * diff, b / var * diff, sigma0 ** 2 * b ** 2 / var


def tilted_mixture(means: torch.Tensor, weights: torch.Tensor, sigma0: float, w: torch.Tensor,
                   alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(w.x / alpha) sum_j w_j N(mu_j, sigma0^2 I), normalised: the means mu_j + sigma0^2 w / alpha and the
    weights w_j exp(w.mu_j / alpha + sigma0^2 |w|^2 / (2 alpha^2)), renormalised."""
    log_w = weights.log() + means @ w / alpha + sigma0 ** 2 * (w @ w) / (2 * alpha ** 2)
    return means + sigma0 ** 2 * w / alpha, torch.softmax(log_w, 0)


class MixtureVelocity(nn.Module):
    """The exact velocity E[eps - x_0 | x_t] of sum_j w_j N(mu_j, sigma0^2 I) under x_t = (1 - t) x_0 + t eps."""

    def __init__(self, means: torch.Tensor, log_weights: torch.Tensor, sigma0: float) -> None:
        super().__init__()
        self.register_buffer("means", means)
        self.register_buffer("log_weights", log_weights)
        self.sigma0 = sigma0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = float(t[0])  # every row is at the same time in the chain's calls
        resp, x0, eps, _ = mixture_posterior(x, self.means, self.log_weights, self.sigma0, 1 - s, s)
        return (resp.unsqueeze(-1) * (eps - x0)).sum(1)


class GaussianMixtureFlow(RectifiedFlow):
    """A :class:`RectifiedFlow` whose velocity is the exact one of a 2-D Gaussian mixture (float64 states).

    The marginal at time t is sum_j w_j N((1 - t) mu_j, ((1 - t)^2 sigma0^2 + t^2) I).
    ``num_conditions`` > 1 makes SMC and nested IS run that many independent populations in one call (sample i
    in population i % num_conditions); the law ignores the condition.
    """

    def __init__(self, means: Sequence[Sequence[float]] = ((-2.0, 0.0), (2.0, 0.0), (0.0, 2.5)),
                 weights: Sequence[float] = (0.5, 0.3, 0.2), sigma0: float = 0.4, num_steps: int = 100,
                 noise_level: float = 0.7, shift: float = 1.0, num_conditions: int = 1) -> None:
        w = torch.tensor(weights, dtype=torch.float64)
        super().__init__(MixtureVelocity(torch.tensor(means, dtype=torch.float64), (w / w.sum()).log(), sigma0),
                         (2,), num_steps=num_steps, shift=shift, noise_level=noise_level, dtype=torch.float64)
        self.means, self.log_weights, self.sigma0 = self.network.means, self.network.log_weights, sigma0
        self.num_conditions = num_conditions

    def coefficients(self, level: int) -> tuple[float, float]:
        """(a, b) of x_k = a x_0 + b eps at ``level``."""
        t = self.time(level)
        return 1 - t, t


class LinearReward(Reward):
    """r(x) = w.x on 2-D points (decoded lists or tensors), read from the states directly, differentiable."""

    name = "linear"

    def __init__(self, w: Sequence[float]) -> None:
        self.w = torch.tensor(w, dtype=torch.float64)

    def __call__(self, samples: Sequence[Sequence[float]]) -> list[float]:
        return [float(torch.as_tensor(s, dtype=torch.float64) @ self.w) for s in samples]

    def score_states(self, model: DiffusionModel, x0: torch.Tensor) -> torch.Tensor:
        return x0 @ self.w.to(x0)

    def relaxed(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.to(x)


class MixtureSoftValue(Value):
    """The exact soft value of a linear reward r(x) = w.x on a Gaussian-mixture toy (a model with ``means``,
    ``log_weights``, ``sigma0`` and ``coefficients(level)``): under the posterior of x_0 given x_k, a mixture
    of N(m_j, c I) with responsibilities rho_j,
    v_k(x) = alpha log E[exp(w.x_0 / alpha) | x_k] = alpha log sum_j rho_j exp(w.m_j / alpha + c |w|^2 / (2 alpha^2))."""

    def __init__(self, w: Sequence[float], alpha: float) -> None:
        self.w, self.alpha = torch.tensor(w, dtype=torch.float64), alpha

    def __call__(self, candidates: Candidates) -> torch.Tensor:
        model, x = candidates.run.model, candidates.x
        candidates.run.stats.value_calls += x.shape[0]
        a, b = model.coefficients(candidates.level)
        resp, x0, _, c = mixture_posterior(x, model.means, model.log_weights, model.sigma0, a, b)
        w = self.w.to(x)
        return self.alpha * torch.logsumexp(resp.log() + x0 @ w / self.alpha + c * (w @ w) / (2 * self.alpha ** 2), 1)
