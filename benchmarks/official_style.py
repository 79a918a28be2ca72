"""SVDD-PM shaped as the published DNA code (masa-ue/SVDD, ``diffusion_gosai.py``), on this project's model.

Written from a reading of that code's structure, to compare throughput on the same model and oracle; it
is not that code. Per step it makes, as the published loop does:

- one denoiser call on the batch's current states (never reused between steps);
- M candidates drawn one after another by Gumbel-max from the global random stream, on the device;
- for each candidate in turn, a denoiser call (its x0 estimate, the argmax of p(x_0 | x_s)) and an oracle
  call on the batch: M + 1 denoiser calls and M oracle calls of B rows per step, in a Python loop;
- a softmax then argmax of the stacked scores, and the chosen candidate gathered row by row (a Python list
  indexed by a device tensor: one host sync per row);
and a last denoiser call that replaces what is still masked by its argmax.
"""
from __future__ import annotations

import torch
from torch import nn

from svdd_lightning.diffusion.masked import MaskedDiffusion


def _gumbel_argmax(probs: torch.Tensor) -> torch.Tensor:
    gumbel = 1e-10 - (torch.rand_like(probs) + 1e-10).log()
    return (probs / gumbel).argmax(dim=-1)


@torch.no_grad()
def official_style_svdd(model: MaskedDiffusion, oracle: nn.Module, batch: int, num_candidates: int = 10,
                        eps: float = 1e-5) -> torch.Tensor:
    """Tokens (batch, L) of SVDD-PM (alpha = 0) decoded the published loop's way; ``oracle(tokens) -> (B,)``."""
    device, steps, mask = model._device(), model.num_steps, model.mask_id
    x = torch.full((batch, model.seq_len), mask, dtype=torch.long, device=device)
    times = torch.linspace(1, eps, steps + 1, device=device)
    dt = (1 - eps) / steps
    for i in range(steps):
        t = times[i].expand(batch)
        s = t - dt
        move_t, move_s = model.schedule.mask_prob(t)[:, None, None], model.schedule.mask_prob(s)[:, None, None]
        probs = model.log_probs(x, t).exp() * (move_t - move_s)
        q = torch.cat([probs, move_s.expand(batch, model.seq_len, 1)], dim=-1)
        keep = x != mask
        candidates = [torch.where(keep, x, _gumbel_argmax(q)) for _ in range(num_candidates)]
        scores = []
        for candidate in candidates:
            x0 = torch.where(candidate == mask, model.log_probs(candidate, s).argmax(-1), candidate)
            scores.append(oracle(x0).float().reshape(-1))
        best = torch.softmax(torch.stack(scores, dim=1), dim=1).argmax(dim=1)
        x = torch.stack([candidates[best[j]][j] for j in range(batch)])
    final = model.log_probs(x, times[-1].expand(batch)).argmax(-1)
    return torch.where(x == mask, final, x)
