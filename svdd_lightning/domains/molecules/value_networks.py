"""A GIN on noisy graphs: SVDD-MC's value network f(x_t, t) and DPS's differentiable reward proxy.

The input is a :class:`~.graph_diffusion.GraphDiffusion` state (node features X_t, adjacency A_t,
node mask) at diffusion time t. A_t's entries are the edge weights of the message passing (PyG's
``DenseGINConv`` without self-loops: h_i <- MLP(sum_j A_ij h_j), the node's own state coming back
through the residual connection), so a noisy, fractional bond still carries its weight; a sinusoidal
embedding of t enters every layer (the official SVDD molecule value
network has no time input). Each layer's masked sum over nodes is concatenated (GIN's readout) and a
small MLP maps it to one value per graph.
"""
from __future__ import annotations

import torch
from torch import nn

from ...checkpoints import Configurable
from ...extras import require
from ...layers import time_features


def _mlp(width: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width))


class GraphGIN(Configurable, nn.Module):
    """GIN value network on (graph state, t) -> (B,).

    Args:
        num_features: node feature channels (the diffusion model's atom types).
        hidden: width of every layer.
        num_layers: GIN message-passing layers.
        time_dim: sinusoidal features of t.
        dropout: dropout inside the GIN MLPs and the readout.
    """

    def __init__(self, num_features: int, hidden: int = 128, num_layers: int = 4, time_dim: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        require("torch_geometric", extra="molecules", feature="GraphGIN")
        from torch_geometric.nn import DenseGINConv  # PyG, imported with the network

        self.time_dim = time_dim
        self.embed = nn.Linear(num_features, hidden)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.time_shift = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_layers))
        # no self-loop term (add_loop=False below), so GIN's eps is a fixed buffer: a trainable one would never
        # get a gradient, which DDP refuses; shipped checkpoints hold it (0) under the same name
        self.convs = nn.ModuleList(DenseGINConv(_mlp(hidden, dropout), train_eps=False) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(num_layers))
        self.head = nn.Sequential(nn.Linear(hidden * (num_layers + 1), hidden), nn.SiLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, 1))

    def forward(self, state: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        x, adj, flags = state["x"], state["adj"], state["flags"]
        mask = flags.unsqueeze(-1)
        time = self.time_mlp(time_features(t.to(x.device), self.time_dim))
        h = (self.embed(x) + time.unsqueeze(1)) * mask
        pooled = [h.sum(dim=1)]
        for conv, norm, shift in zip(self.convs, self.norms, self.time_shift):
            update = conv(h, adj, mask=flags.bool(), add_loop=False)
            h = (h + torch.nn.functional.silu(norm(update + shift(time).unsqueeze(1)))) * mask
            pooled.append(h.sum(dim=1))
        return self.head(torch.cat(pooled, dim=-1)).squeeze(-1)
