"""A diffusion transformer whose parameters carry the names of MDLM's ``DIT`` backbone.

The module tree mirrors kuleshov-group/mdlm ``models/dit.py`` so that the ``backbone.*`` weights
of an MDLM checkpoint load with ``strict=True``: ``vocab_embed.embedding``, ``sigma_map.mlp``,
``rotary_emb.inv_freq``, ``blocks.N.{norm1, attn_qkv, attn_out, norm2, mlp, adaLN_modulation}``
and ``output_layer.{norm_final, linear, adaLN_modulation}``. Attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention` (no flash-attn), in float32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import Configurable

FREQUENCY_EMBEDDING_SIZE = 256  # width of the sinusoidal features of sigma (MDLM's TimestepEmbedder)


class ScaleOnlyLayerNorm(nn.Module):
    """Layer norm with a learned gain and no bias, computed in float32 and returned in the input's dtype."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.layer_norm(x.float(), (self.weight.shape[0],)) * self.weight).to(x.dtype)


def _shift_scale(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x * (1 + scale) + shift with (N, 1, D) modulation terms."""
    return torch.addcmul(shift, x, 1 + scale)


class TokenEmbedding(nn.Module):
    """A (vocab, hidden) table indexed by token ids, or multiplied by a one-hot relaxation."""

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, hidden_size))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding[x] if x.dtype == torch.long else x.to(self.embedding.dtype) @ self.embedding


class SigmaEmbedding(nn.Module):
    """Sinusoidal features of the noise level followed by a two-layer SiLU MLP."""

    def __init__(self, cond_dim: int, frequency_size: int = FREQUENCY_EMBEDDING_SIZE) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def features(self, sigma: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
        """(N,) -> (N, frequency_size): [cos(sigma w_i), sin(sigma w_i)], w_i = max_period^(-i/half)."""
        half = self.frequency_size // 2
        rates = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
        angles = sigma.float()[:, None] * rates[None]
        feats = torch.cat([angles.cos(), angles.sin()], dim=-1)
        if self.frequency_size % 2:
            feats = F.pad(feats, (0, 1))
        return feats

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """The features are made in float32 and given to the MLP in its dtype (bf16 under bf16-true)."""
        return self.mlp(self.features(sigma).to(self.mlp[0].weight.dtype))


class RotaryTable(nn.Module):
    """Rotary position angles for a head width; ``inv_freq`` is a saved buffer as in MDLM."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim))

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables of shape (L, head_dim), the half-width angles repeated twice (float32 angles,
        also when the model's weights are bf16: positions beyond 256 are not exact in bf16)."""
        angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), self.inv_freq.float())
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half (non-interleaved) rotary embedding of x (..., L, head_dim)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms and residual gates are modulated by the condition."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm1 = ScaleOnlyLayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = ScaleOnlyLayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        p = self.dropout if self.training else 0.0

        h = _shift_scale(self.norm1(x), shift_a, scale_a)
        # qkv features are laid out (3, heads, head_dim); attention wants (N, heads, L, head_dim)
        q, k, v = self.attn_qkv(h).view(n, length, 3, self.n_heads, dim // self.n_heads).permute(2, 0, 3, 1, 4)
        cos, sin = rotary
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        h = h.transpose(1, 2).reshape(n, length, dim)
        x = x + gate_a * F.dropout(self.attn_out(h), p, self.training)

        h = self.mlp(_shift_scale(self.norm2(x), shift_m, scale_m))
        return x + gate_m * F.dropout(h, p, self.training)


class FinalLayer(nn.Module):
    """Modulated norm and the projection to vocabulary logits."""

    def __init__(self, hidden_size: int, out_size: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_final = ScaleOnlyLayerNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_size)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden_size)
        for layer in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(_shift_scale(self.norm_final(x), shift, scale))


class MDLMTransformer(Configurable, nn.Module):
    """MDLM's DiT denoiser: (tokens (N, L) or one-hot (N, L, V), sigma (N,)) -> logits (N, L, V).

    ``vocab_size`` counts every symbol the model embeds and predicts, the mask token included
    (MDLM puts [MASK] at the last index). The parameter names and their registration order
    match MDLM's ``DIT``, so its state dicts and EMA shadow lists apply unchanged.
    """

    def __init__(self, vocab_size: int, hidden_size: int, cond_dim: int, n_blocks: int, n_heads: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.vocab_embed = TokenEmbedding(hidden_size, vocab_size)
        self.sigma_map = SigmaEmbedding(cond_dim)
        self.rotary_emb = RotaryTable(hidden_size // n_heads)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, n_heads, cond_dim, dropout=dropout)
                                    for _ in range(n_blocks))
        self.output_layer = FinalLayer(hidden_size, vocab_size, cond_dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h = self.vocab_embed(x)
        c = F.silu(self.sigma_map(sigma.reshape(-1)))
        rotary = tuple(table.to(h.dtype) for table in self.rotary_emb(h.shape[1], h.device))
        for block in self.blocks:
            h = block(h, rotary, c)
        return self.output_layer(h, c)
