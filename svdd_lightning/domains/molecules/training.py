"""Pretraining GDSS's score networks by denoising score matching, with an EMA copy for sampling."""
from __future__ import annotations


import torch

from ...lightning.training import TrainingModule, exponential_moving_average
from .graph_diffusion import GraphDiffusion, mask_adjacency, mask_nodes, symmetric_noise
from .sde import VPSDE


def score_matching_loss(model: GraphDiffusion, x: torch.Tensor, adj: torch.Tensor, flags: torch.Tensor,
                        generator: torch.Generator | None = None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """GDSS's loss for X and A: E_t ||s_theta(x_t) s(t) + z||^2, summed over entries, mean over graphs.

    t ~ U(eps, 1), x_t = m(t) x_0 + s(t) z with z masked (symmetric, zero diagonal for A), as in
    GDSS's ``get_sde_loss_fn`` with ``reduce_mean=False``.
    """
    b, device = x.shape[0], x.device
    t = (torch.rand(b, generator=generator) * (1 - eps) + eps).to(device)
    z_x = mask_nodes(torch.randn(x.shape, generator=generator).to(device), flags)
    z_adj = mask_adjacency(symmetric_noise(adj.shape, generator).to(device), flags)
    noisy = {}
    for key, clean, z, sde in (("x", x, z_x, model.x_sde), ("adj", adj, z_adj, model.adj_sde)):
        mean, std = (v.to(device).view(-1, 1, 1) for v in sde.marginal(t.cpu()))
        noisy[key] = mean * clean + std * z
    xt, adjt = mask_nodes(noisy["x"], flags), mask_adjacency(noisy["adj"], flags)
    losses = []
    for network, sde, z in ((model.x_network, model.x_sde, z_x), (model.adj_network, model.adj_sde, z_adj)):
        out = network(xt, adjt, flags)
        std = sde.marginal(t.cpu())[1].to(device).view(-1, 1, 1)
        score = -out / std if isinstance(sde, VPSDE) else out
        losses.append(((score * std + z) ** 2).flatten(1).sum(dim=1).mean())
    return losses[0], losses[1]


class GraphScorePretraining(TrainingModule):
    """Trains a :class:`GraphDiffusion`'s two score networks (GDSS) with an exponential moving average.

    ``model`` holds the EMA weights, the ones that are validated and exported (GDSS samples with its
    EMA); the optimiser updates ``online``. At setup the prior's molecule-size distribution is taken
    from the DataModule's training graphs.
    """

    def __init__(self, model: GraphDiffusion, lr: float = 5e-3, weight_decay: float = 1e-4,
                 warmup_steps: int = 100, ema_decay: float = 0.999) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.online = model
        self.ema = exponential_moving_average(model, ema_decay)

    @property
    def model(self) -> GraphDiffusion:
        """The EMA weights: validated and exported."""
        return self.ema.module

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "node_count_distribution", None) is not None:
            probs = datamodule.node_count_distribution()
            self.online.set_num_nodes_probs(probs)
            self.model.set_num_nodes_probs(probs)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, adj, flags = batch
        loss_x, loss_adj = score_matching_loss(self.online, x, adj, flags)
        self.log_dict({"train/loss_x": loss_x, "train/loss_adj": loss_adj}, prog_bar=True, batch_size=len(x))
        return loss_x + loss_adj

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update_parameters(self.online)

    def evaluate(self, batch, batch_idx: int, stage: str) -> None:
        x, adj, flags = batch
        generator = torch.Generator().manual_seed(0)
        loss_x, loss_adj = score_matching_loss(self.model, x, adj, flags, generator)
        self.log_dict({f"{stage}/loss_x": loss_x, f"{stage}/loss_adj": loss_adj, f"{stage}/loss": loss_x + loss_adj},
                      prog_bar=True, batch_size=len(x), sync_dist=True)
