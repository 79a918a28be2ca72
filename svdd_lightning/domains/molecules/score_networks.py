"""GDSS's score networks (Jo et al. 2022): ScoreNetworkX, ScoreNetworkX_GMH and ScoreNetworkA.

Re-implemented from the description of harryjo97/GDSS (``models/``) with the same sub-module and
parameter names, so that a published ``x_state_dict`` / ``adj_state_dict`` loads with
``load_state_dict(strict=True)`` and EMA shadow lists map onto ``parameters()`` in the same order.

The networks take no time input. They return the raw network output ``s``; the score is derived
from it as GDSS's ``losses.get_score_fn`` does (continuous time only):

- VE SDE: the score is ``s`` itself (the network learns the already-scaled score);
- VP and subVP SDE: the score is ``-s / std(t)`` with ``std`` the second value of the SDE's
  ``marginal_prob(., t)``: ``sqrt(1 - exp(2 c(t)))`` for VP and, as GDSS writes it,
  ``1 - exp(2 c(t))`` (no square root) for subVP, where ``c(t) = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2``.

Inputs are batched dense graphs: node features ``x`` (B, N, F), a weighted adjacency ``adj``
(B, N, N) and the node mask ``flags`` (B, N) with 1 for present nodes.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoints import Configurable

Activation = Callable[[torch.Tensor], torch.Tensor]


def mask_x(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Zero the feature rows of absent nodes: x (B, N, F), flags (B, N)."""
    return x * flags.unsqueeze(-1)


def mask_adjs(adj: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Zero the rows and columns of absent nodes of (B, N, N) or channelled (B, C, N, N) adjacencies."""
    if adj.dim() == 4:
        flags = flags.unsqueeze(1)
    return adj * flags.unsqueeze(-1) * flags.unsqueeze(-2)


def pow_tensor(adj: torch.Tensor, c: int) -> torch.Tensor:
    """The powers [A, A^2, ..., A^c] of a (B, N, N) adjacency stacked as channels: (B, c, N, N)."""
    powers = [adj]
    for _ in range(c - 1):
        powers.append(torch.bmm(powers[-1], adj))
    return torch.stack(powers, dim=1)


class DenseGCNConv(nn.Module):
    """Dense graph convolution: D^-1/2 (A with unit diagonal) D^-1/2 X W + b.

    As in GDSS (after PyG's DenseGCNConv): the diagonal of A is *set* to 1 (not added), degrees
    are the row sums of that matrix clamped below at 1, W is Glorot-uniform and b starts at zero.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        bound = math.sqrt(6.0 / (in_channels + out_channels))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        n = adj.shape[-1]
        adj = adj.clone()
        adj[..., torch.arange(n), torch.arange(n)] = 1.0
        deg_inv_sqrt = adj.sum(dim=-1).clamp(min=1).pow(-0.5)
        norm = deg_inv_sqrt.unsqueeze(-1) * adj * deg_inv_sqrt.unsqueeze(-2)
        return norm @ (x @ self.weight) + self.bias


class MLP(nn.Module):
    """``num_layers`` linear layers (``linear`` when 1, else ``linears``) with ``activation`` between."""

    def __init__(self, num_layers: int, input_dim: int, hidden_dim: int, output_dim: int,
                 activation: Activation = F.elu) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs num_layers >= 1, got {num_layers}")
        self.activation = activation
        if num_layers == 1:
            self.linear = nn.Linear(input_dim, output_dim)
        else:
            dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
            self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "linear"):
            return self.linear(h)
        for layer in self.linears[:-1]:
            h = self.activation(layer(h))
        return self.linears[-1](h)


class Attention(nn.Module):
    """GDSS's graph multi-head attention (after Baek et al. 2021) on one adjacency channel.

    Q and K come from GCNs (``conv="GCN"``) or 2-layer tanh MLPs (``conv="MLP"``), V from a GCN.
    The new adjacency is tanh(Q_h K_h^T / sqrt(out_dim)) averaged over the heads, then symmetrised.
    """

    def __init__(self, in_dim: int, attn_dim: int, out_dim: int, num_heads: int = 4, conv: str = "GCN") -> None:
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"GDSS attention: attention dim {attn_dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.out_dim, self.conv = num_heads, out_dim, conv
        if conv == "GCN":
            self.gnn_q, self.gnn_k = DenseGCNConv(in_dim, attn_dim), DenseGCNConv(in_dim, attn_dim)
        elif conv == "MLP":
            self.gnn_q = MLP(2, in_dim, 2 * attn_dim, attn_dim, activation=torch.tanh)
            self.gnn_k = MLP(2, in_dim, 2 * attn_dim, attn_dim, activation=torch.tanh)
        else:
            raise ValueError(f"GDSS attention: conv must be 'GCN' or 'MLP', got {conv!r}")
        self.gnn_v = DenseGCNConv(in_dim, out_dim)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, values: bool = True,
                attention: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(V, symmetrised attention map); ``values`` / ``attention`` False skip one (None in its place)."""
        v = self.gnn_v(x, adj) if values else None
        if not attention:
            return v, None
        if self.conv == "GCN":
            q, k = self.gnn_q(x, adj), self.gnn_k(x, adj)
        else:
            q, k = self.gnn_q(x), self.gnn_k(x)
        b, n, d = q.shape
        q = q.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # B x heads x N x d_h
        k = k.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)
        scores = torch.tanh(q @ k.transpose(-1, -2) / math.sqrt(self.out_dim)).mean(dim=1)
        return v, (scores + scores.transpose(-1, -2)) / 2


class AttentionLayer(nn.Module):
    """One GDSS layer: x (B, N, F_in) and adj (B, C_in, N, N) to (B, N, F_out) and (B, C_out, N, N).

    Each input channel has its own :class:`Attention`; the channels' V outputs are mixed by
    ``multi_channel`` into the new node features (masked, tanh), and the per-channel attention
    maps next to the input channels go through ``mlp`` into the new channels (symmetrised, masked).

    ``outputs`` names the outputs the network uses: GDSS's last layer of the node network discards the
    new adjacency, the adjacency network's last layer the new node features. The modules that make only
    a discarded output are kept (published state dicts and EMA lists name them) but frozen and not run:
    no gradient could reach them, and DDP fails on trainable parameters without one.
    """

    def __init__(self, num_linears: int, conv_input_dim: int, attn_dim: int, conv_output_dim: int,
                 input_dim: int, output_dim: int, num_heads: int = 4, conv: str = "GCN",
                 outputs: tuple[str, ...] = ("x", "adj")) -> None:
        super().__init__()
        if not outputs or set(outputs) - {"x", "adj"}:
            raise ValueError(f"AttentionLayer.outputs must name 'x' and/or 'adj', got {outputs!r}")
        self.attn = nn.ModuleList(Attention(conv_input_dim, attn_dim, conv_output_dim, num_heads, conv)
                                  for _ in range(input_dim))
        hidden_dim = 2 * max(input_dim, output_dim)
        self.mlp = MLP(num_linears, 2 * input_dim, hidden_dim, output_dim)
        self.multi_channel = MLP(2, input_dim * conv_output_dim, hidden_dim, conv_output_dim)
        self.outputs = tuple(outputs)
        for module in self.unused_modules():
            module.requires_grad_(False)

    def unused_modules(self) -> list[nn.Module]:
        """The modules that only make an output this layer does not give (kept for checkpoints, frozen)."""
        unused: list[nn.Module] = []
        if "x" not in self.outputs:
            unused += [self.multi_channel, *(attn.gnn_v for attn in self.attn)]
        if "adj" not in self.outputs:
            unused += [self.mlp, *(m for attn in self.attn for m in (attn.gnn_q, attn.gnn_k))]
        return unused

    def forward(self, x: torch.Tensor, adj: torch.Tensor,
                flags: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(new node features, new adjacency channels); an output not in ``outputs`` is None."""
        want_x, want_adj = "x" in self.outputs, "adj" in self.outputs
        values, maps = zip(*(attn(x, adj[:, c], want_x, want_adj) for c, attn in enumerate(self.attn)))
        x_out = torch.tanh(mask_x(self.multi_channel(torch.cat(values, dim=-1)), flags)) if want_x else None
        if not want_adj:
            return x_out, None
        mlp_in = torch.cat([torch.stack(maps, dim=-1), adj.permute(0, 2, 3, 1)], dim=-1)
        new_adj = self.mlp(mlp_in).permute(0, 3, 1, 2)
        return x_out, mask_adjs(new_adj + new_adj.transpose(-1, -2), flags)


def _attention_stack(count: int, num_linears: int, feat_dim: int, nhid: int, adim: int, c_init: int,
                     c_hid: int, c_final: int, num_heads: int, conv: str, last_outputs: tuple[str, ...]) -> nn.ModuleList:
    """GDSS's stack: the first layer maps c_init -> c_hid channels (attention dim nhid), the last
    c_hid -> c_final, the others c_hid -> c_hid (attention dim adim); node features are nhid wide.
    The last layer gives only ``last_outputs`` (what the network reads of it)."""
    layers = nn.ModuleList()
    for i in range(count):
        outputs = last_outputs if i == count - 1 else ("x", "adj")
        if i == 0:
            layers.append(AttentionLayer(num_linears, feat_dim, nhid, nhid, c_init, c_hid, num_heads, conv, outputs))
        else:
            out = c_final if i == count - 1 else c_hid
            layers.append(AttentionLayer(num_linears, nhid, adim, nhid, c_hid, out, num_heads, conv, outputs))
    return layers


class ScoreNetworkX(Configurable, nn.Module):
    """GDSS's node-feature network: ``depth`` tanh GCN layers, all layer outputs (input included)
    concatenated, a 3-layer ELU MLP back to ``max_feat_num``, masked by ``flags``."""

    def __init__(self, max_feat_num: int, depth: int, nhid: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseGCNConv(max_feat_num if i == 0 else nhid, nhid) for i in range(depth))
        fdim = max_feat_num + depth * nhid
        self.final = MLP(3, fdim, 2 * fdim, max_feat_num)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """Network output for x, (B, N, F); see the module docstring for turning it into a score."""
        outputs = [x]
        for layer in self.layers:
            outputs.append(torch.tanh(layer(outputs[-1], adj)))
        return mask_x(self.final(torch.cat(outputs, dim=-1)), flags)


class ScoreNetworkX_GMH(Configurable, nn.Module):
    """GDSS's node-feature network with graph multi-head attention layers (the ZINC250k "v2" model).

    The adjacency powers [A, ..., A^c_init] feed a stack of ``depth`` :class:`AttentionLayer`; their
    node outputs (tanh again, as GDSS does) are concatenated with x into a 3-layer ELU MLP.
    """

    def __init__(self, max_feat_num: int, depth: int, nhid: int, num_linears: int, c_init: int, c_hid: int,
                 c_final: int, adim: int, num_heads: int = 4, conv: str = "GCN") -> None:
        super().__init__()
        self.c_init = c_init
        self.layers = _attention_stack(depth, num_linears, max_feat_num, nhid, adim, c_init, c_hid, c_final,
                                       num_heads, conv, last_outputs=("x",))
        fdim = max_feat_num + depth * nhid
        self.final = MLP(3, fdim, 2 * fdim, max_feat_num)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """Network output for x, (B, N, F); see the module docstring for turning it into a score."""
        adjc = pow_tensor(adj, self.c_init)
        outputs = [x]
        for layer in self.layers:
            x, adjc = layer(x, adjc, flags)
            x = torch.tanh(x)
            outputs.append(x)
        return mask_x(self.final(torch.cat(outputs, dim=-1)), flags)


class ScoreNetworkA(Configurable, nn.Module):
    """GDSS's adjacency network.

    The powers [A, ..., A^c_init] go through ``num_layers`` :class:`AttentionLayer` (channels
    c_init -> c_hid -> ... -> c_final); every layer's channels, the input powers included, are
    concatenated per node pair into a 3-layer ELU MLP with one output. The result has a zero
    diagonal and zero rows/columns for absent nodes; for a symmetric ``adj`` it is symmetric, as
    every layer's channels are. ``max_feat_num`` is the node-feature width; ``max_node_num`` is recorded for parity with
    GDSS's constructor only (the diagonal mask follows the input's N).
    """

    def __init__(self, max_feat_num: int, max_node_num: int, nhid: int, num_layers: int, num_linears: int,
                 c_init: int, c_hid: int, c_final: int, adim: int, num_heads: int = 4, conv: str = "GCN") -> None:
        super().__init__()
        self.c_init = c_init
        self.layers = _attention_stack(num_layers, num_linears, max_feat_num, nhid, adim, c_init, c_hid, c_final,
                                       num_heads, conv, last_outputs=("adj",))
        fdim = c_hid * (num_layers - 1) + c_final + c_init
        self.final = MLP(3, fdim, 2 * fdim, 1)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """Network output for adj, (B, N, N); see the module docstring for turning it into a score."""
        adjc = pow_tensor(adj, self.c_init)
        channels = [adjc]
        for layer in self.layers:
            x, adjc = layer(x, adjc, flags)
            channels.append(adjc)
        score = self.final(torch.cat(channels, dim=1).permute(0, 2, 3, 1)).squeeze(-1)
        n = adj.shape[-1]
        off_diagonal = 1.0 - torch.eye(n, dtype=score.dtype, device=score.device)
        return mask_adjs(score * off_diagonal, flags)
