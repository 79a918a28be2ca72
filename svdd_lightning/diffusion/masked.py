"""Masked (absorbing-state) discrete diffusion with MDLM's SUBS parameterisation.

Tokens 0 .. V-1 are the alphabet, token V is [MASK]. The backbone maps tokens (or their one-hot
relaxation, for gradient guidance) and the noise level to logits over V + 1 symbols; SUBS sets the
mask logit to -inf and copies unmasked input tokens (carry-over unmasking).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import Configurable
from ..core.model import DiffusionModel
from ..core.objective import FineTuningObjective
from ..sample_files import FastaFiles
from .tokens import encode
from .schedule import LogLinearSchedule

#: tokens (rows x length) per denoiser call on a CPU when the decoder sets no chunk_size: larger batches
#: spill the caches (measured with the shipped DNA model on 2 cores: 64 x 200 tokens per call ran 1.6x
#: faster per row than 320 x 200)
CPU_DENOISE_TOKENS = 64 * 200


class MaskedDiffusion(Configurable, DiffusionModel):
    """An MDLM-style model with a T-step ancestral sampler.

    Level k has time t_k = 1 - k / T. A step from t to s < t unmasks each masked token with
    probability (t - s) / t, drawing it from the denoiser's p(x_0 | x_t); unmasked tokens stay.
    With ``time_conditioning=False`` (MDLM's default) the denoiser ignores t, so an unchanged
    state reuses its cached prediction.

    Args:
        backbone: the denoiser network: tokens (B, L) (and times) -> logits over the alphabet and [MASK].
        alphabet: the tokens, e.g. ``ACGT``; [MASK] is the extra last token.
        seq_len: sequence length L.
        num_steps: sampling steps T.
        schedule: the noise schedule (default: MDLM's log-linear).
        time_conditioning: whether the backbone takes the time (MDLM: no).
    """

    random_one_step_x0 = True

    def __init__(self, backbone: nn.Module, alphabet: str, seq_len: int, num_steps: int = 128,
                 schedule: LogLinearSchedule | None = None, time_conditioning: bool = False) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet must be distinct symbols, got {alphabet!r}")
        self.backbone = backbone
        self.alphabet = alphabet
        self.vocab_size = len(alphabet)
        self.mask_id = len(alphabet)
        self.seq_len = seq_len
        self.num_steps = num_steps
        self.schedule = schedule or LogLinearSchedule()
        self.time_conditioning = time_conditioning
        self.denoiser_uses_level = time_conditioning

    # --- sequences <-> tokens -------------------------------------------------------------------
    def encode(self, sequences: Sequence[str]) -> torch.Tensor:
        """Strings over the alphabet -> token tensor (N, seq_len), with a one-line error otherwise."""
        for i, seq in enumerate(sequences):
            if len(seq) != self.seq_len:
                raise ValueError(f"sequence {i} has length {len(seq)}; this model takes length {self.seq_len}")
        return encode(sequences, self.alphabet).to(self._device())

    def decode(self, x0: torch.Tensor) -> list[str]:
        """Token rows -> strings; "N" marks a position still masked (never in a finished sample)."""
        table = np.frombuffer((self.alphabet + "N").encode(), dtype="S1")
        small = x0.to(torch.uint8) if self.mask_id < 256 else x0  # a byte per token to the host
        rows = np.ascontiguousarray(table[small.cpu().numpy()])
        return [row.decode() for row in rows.view(f"S{max(x0.shape[1], 1)}").ravel()]

    def sample_files(self) -> FastaFiles:
        """A decoding run writes this model's samples (strings) as FASTA."""
        return FastaFiles()

    def finetuning_objective(self) -> "MaskedDiffusionObjective":
        """Fine-tuning on guided samples minimises this model's NELBO (bits per token), with its KL rate to a
        reference model as the anchor."""
        return MaskedDiffusionObjective()

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def denoise_chunk_rows(self) -> int | None:
        """On a CPU, rows of at most :data:`CPU_DENOISE_TOKENS` tokens per call; elsewhere the whole batch."""
        return max(1, CPU_DENOISE_TOKENS // self.seq_len) if self._device().type == "cpu" else None

    # --- the denoiser --------------------------------------------------------------------------------
    def log_probs(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """SUBS log p(x_0 | x_t) over the V symbols, (N, L, V); ``x`` is tokens or one-hot (N, L, V+1)."""
        sigma = self.schedule.sigma(t) if self.time_conditioning else torch.zeros_like(t)
        logits = self.backbone(x, sigma.to(self._device())).float()[..., : self.vocab_size]
        log_p = logits.log_softmax(dim=-1)
        tokens = x if x.dtype == torch.long else x.argmax(-1)
        unmasked = (tokens != self.mask_id).unsqueeze(-1)
        carry = F.one_hot(tokens.clamp(max=self.vocab_size - 1), self.vocab_size).bool()
        return torch.where(unmasked, torch.where(carry, 0.0, -torch.inf), log_p)

    def level_time(self, level: int) -> float:
        return 1.0 - level / self.num_steps

    def denoise(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """log p(x_0 | x_t) (N, L, V), on the model's device."""
        return self.denoise_at(x, self.level_time(level))

    def denoise_at(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """log p(x_0 | x_t) (N, L, V) at time ``t`` (any time, not only a level's), on the model's device."""
        device = self._device()
        return self.log_probs(x.to(device), torch.full((x.shape[0],), t, device=device))

    def initial_state(self, generators: Sequence[torch.Generator], conditions: torch.Tensor | None = None) -> torch.Tensor:
        return torch.full((len(generators), self.seq_len), self.mask_id, dtype=torch.long, device=self._device())

    def propose(self, x: torch.Tensor, prediction: torch.Tensor, level: int,
                generators: Sequence[torch.Generator], num_candidates: int) -> torch.Tensor:
        t, s = self.level_time(level), self.level_time(level + 1)
        m, (b, length) = num_candidates, x.shape
        # drawn on the CPU from each sample's generator (a sample is the same on every device), then moved
        u = torch.stack([torch.rand((m, length, 2), generator=g) for g in generators]).view(b * m, length, 2)
        u = u.to(prediction.device)
        x = x.to(prediction.device).repeat_interleave(m, dim=0)
        cdf = prediction.exp().cumsum(-1).repeat_interleave(m, dim=0)
        token = (u[..., 1:] > cdf).sum(-1).clamp_(max=self.vocab_size - 1)
        unmask = (x == self.mask_id) & (u[..., 0] >= s / t)
        return torch.where(unmask, token, x)

    def forward_noise(self, x0: torch.Tensor, level: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Mask each token independently with probability t_k (the sampler's marginal at level k)."""
        u = torch.stack([torch.rand(x0.shape[1], generator=g) for g in generators]).to(x0.device)
        return torch.where(u < self.level_time(level), self.mask_id, x0)

    def x0_samples(self, x: torch.Tensor, prediction: torch.Tensor, level: int, generators: Sequence[torch.Generator],
                   num_samples: int, num_steps: int) -> torch.Tensor:
        """Clean sequences drawn by ``num_steps`` steps of this sampler on an even grid from t_k to 0.

        One step draws every masked token independently from the denoiser output already computed (its
        factorised p(x_0 | x_t): no denoiser call). With ``num_steps = num_steps - level`` the grid is the
        sampler's own, so the draws are exact samples of p_pre(x_0 | x_k)."""
        n, t = num_samples, self.level_time(level)
        x, log_p = x.to(prediction.device).repeat_interleave(n, dim=0), prediction.repeat_interleave(n, dim=0)
        rows = [g for g in generators for _ in range(n)]
        for j in range(num_steps):
            s = t * (num_steps - j - 1) / (num_steps - j)
            if j:
                log_p = self.denoise_at(x, t)
            # drawn on the CPU from each sample's generator (the same draws on every device), then moved
            u = torch.stack([torch.rand((x.shape[1], 2), generator=g) for g in rows]).to(log_p.device)
            token = (u[..., 1:] > log_p.exp().cumsum(-1)).sum(-1).clamp_(max=self.vocab_size - 1)
            x = torch.where((x == self.mask_id) & (u[..., 0] >= s / t), token, x)
            t = s
        return x

    def x0_hat(self, x: torch.Tensor, prediction: torch.Tensor, level: int) -> torch.Tensor:
        """The denoiser's most likely clean sequence; unmasked tokens are kept."""
        return torch.where(x == self.mask_id, prediction.argmax(-1), x)

    def guided_prediction(self, x: torch.Tensor, level: int, guidance: Callable[[torch.Tensor], torch.Tensor],
                          scale: float) -> torch.Tensor:
        """DPS on the one-hot relaxation: p(x_0 | x_t) tilted by exp(scale * d r / d x0_hat).

        x0_hat is the denoiser's probability table (N, L, V) (one-hot where x_t is unmasked); the
        gradient of the differentiable reward there is, to first order, the reward change of
        unmasking each position to each symbol, so it tilts the masked positions' proposals.
        """
        with torch.no_grad():
            log_p = self.denoise(x, level)
        probs = log_p.exp().requires_grad_(True)
        (grad,) = torch.autograd.grad(guidance(probs).sum(), probs)
        tilted = (log_p + scale * grad).log_softmax(-1)
        return torch.where((x.to(log_p.device) == self.mask_id).unsqueeze(-1), tilted, log_p)

    # --- likelihood -----------------------------------------------------------------------------------
    def noise(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) at continuous times ``t`` (one per row): each token masked with probability mask_prob(t)."""
        mask_prob = self.schedule.mask_prob(t).to(x0.device)
        u = torch.rand(x0.shape, generator=generator).to(x0.device)
        return torch.where(u < mask_prob.unsqueeze(1), self.mask_id, x0)

    def nelbo(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Continuous-time NELBO of each sequence at times ``t`` (one per row), in nats."""
        xt = self.noise(x0, t, generator)
        return self.nelbo_at(x0, xt, t, self.log_probs(xt, t))

    def nelbo_at(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        """The NELBO term of ``x0`` at its noised state ``xt``, given ``log_p = log_probs(xt, t)``, in nats."""
        nll = -log_p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        return self.schedule.nelbo_weight(t).to(x0.device) * (nll * (xt == self.mask_id)).sum(-1)

    @torch.no_grad()
    def elbo(self, x0: torch.Tensor, num_times: int = 32, seed: int = 0) -> torch.Tensor:
        """Monte-Carlo ELBO (lower bound on log p_pre(x_0)) per sequence in nats, on stratified times."""
        generator = torch.Generator().manual_seed(seed)
        times = (torch.arange(num_times) + 0.5) / num_times * (1 - self.schedule.eps) + self.schedule.eps
        total = torch.zeros(x0.shape[0], device=x0.device)
        for t in times:
            total += self.nelbo(x0, t.expand(x0.shape[0]), generator)
        return -(total / num_times)


class MaskedDiffusionObjective(FineTuningObjective):
    """MDLM's NELBO and the KL rate to a reference, both in bits per token.

    At a noised state x_t ~ q(x_t | x_0) the KL term is w(t) sum_l KL(p_theta(x_0^l | x_t) || p_ref(x_0^l | x_t))
    over the masked positions l, with the NELBO weight w(t) (1/t for the log-linear schedule): a masked
    token is unmasked at rate w(t) to a symbol drawn from the denoiser's prediction, so its expectation
    over t and x_t is the KL between the two models' reverse chains (DRAKES's regulariser) when x_t is
    distributed as the fine-tuned chain's states. Here x_t noises the batch's guided samples, which the
    fine-tuned model is trained to produce. NELBO and KL share one denoiser pass.

    ``val_times`` stratified times give the validation losses (as in pretraining's validation).
    """

    def __init__(self, val_times: int = 8) -> None:
        if val_times < 1:
            raise ValueError(f"MaskedDiffusionObjective.val_times must be >= 1, got {val_times}")
        self.val_times = val_times

    def _losses(self, model: MaskedDiffusion, x0: Tensor, t: Tensor, reference: MaskedDiffusion | None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        bits = x0.shape[1] * math.log(2)
        xt = model.noise(x0, t, generator)
        log_p = model.log_probs(xt, t)
        nelbo = model.nelbo_at(x0, xt, t, log_p) / bits
        if reference is None:
            return nelbo, None
        with torch.no_grad():
            log_ref = reference.log_probs(xt, t)
        masked = (xt == model.mask_id).unsqueeze(-1)
        # unmasked positions carry 0 / -inf (carry-over): zero them before the KL (no NaN gradients)
        log_p, log_ref = torch.where(masked, log_p, 0.0), torch.where(masked, log_ref, 0.0)
        kl = (log_p.exp() * (log_p - log_ref)).sum(dim=(1, 2))
        return nelbo, model.schedule.nelbo_weight(t).to(kl.device) * kl / bits

    def training_losses(self, model, x0, reference=None):
        return self._losses(model, x0, model.schedule.sample_times(x0.shape[0]).to(x0.device), reference)

    def validation_losses(self, model, x0, reference=None):
        generator = torch.Generator().manual_seed(0)
        times = (torch.arange(self.val_times) + 0.5) / self.val_times
        terms = [self._losses(model, x0, t.expand(x0.shape[0]).to(x0.device), reference, generator) for t in times]
        nelbo = torch.stack([n for n, _ in terms]).mean(0)
        return nelbo, None if reference is None else torch.stack([k for _, k in terms]).mean(0)
