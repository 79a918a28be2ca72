"""GDSS as a DiffusionModel: candidates keep their own molecule's mask; compute is counted."""
from __future__ import annotations

import torch
from torch import nn

from svdd_lightning import SVDD, BestOfN, PosteriorMeanValue, PretrainedSampling
from svdd_lightning.domains.molecules.graph_diffusion import GraphDiffusion
from svdd_lightning.domains.molecules.sde import VESDE, VPSDE

N, ATOMS = 6, ("C", "N", "O", "F")


class PointMassScore(nn.Module):
    """The exact score of q(x_t | x_0 = target) for one SDE, as a GDSS-style network output
    (VE: the score itself; VP: -score * s(t), which GraphDiffusion divides back)."""

    def __init__(self, key: str, target: torch.Tensor, sde, t: float = 0.5) -> None:
        super().__init__()
        self.key, self.sde, self.t = key, sde, t
        self.register_buffer("target", target)
        self.weight = nn.Parameter(torch.zeros(()))  # GraphDiffusion reads the device from parameters

    def forward(self, x, adj, flags):
        state = x if self.key == "x" else adj
        m, s = self.sde.marginal(torch.tensor(self.t))
        score = -(state - m * self.target) / s**2
        return -score * s if isinstance(self.sde, VPSDE) else score


def tiny_model(num_steps: int = 5, x_sde=None, adj_sde=None) -> GraphDiffusion:
    torch.manual_seed(0)
    x_sde, adj_sde = x_sde or VESDE(0.1, 1.0, num_steps), adj_sde or VESDE(0.1, 1.0, num_steps)
    target_x, target_adj = torch.rand(N, len(ATOMS)), torch.rand(N, N)
    return GraphDiffusion(PointMassScore("x", target_x, x_sde), PointMassScore("adj", target_adj + target_adj.T, adj_sde),
                          x_sde, adj_sde, ATOMS, N, [0.0, 0.2, 0.3, 0.0, 0.3, 0.2],
                          num_steps=num_steps)


def mixed_size_state(model: GraphDiffusion, sizes=(2, 5, 3)) -> dict:
    gens = [torch.Generator().manual_seed(i) for i in range(len(sizes))]
    state = model.initial_state(gens)
    flags = torch.stack([(torch.arange(N) < n).float() for n in sizes])
    return {"x": state["x"] * flags[..., None], "adj": state["adj"] * flags[:, :, None] * flags[:, None, :],
            "flags": flags}


def test_candidates_keep_their_own_molecule_mask_with_mixed_sizes():
    model, m = tiny_model(), 4
    state = mixed_size_state(model)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    with torch.inference_mode():
        out = model.propose(state, model.denoise(state, 1), 1, gens, m)
    assert out["x"].shape == (3 * m, N, len(ATOMS)) and out["adj"].shape == (3 * m, N, N)
    for b, size in enumerate((2, 5, 3)):
        for j in range(m):
            row = b * m + j
            assert torch.equal(out["flags"][row], state["flags"][b])
            assert out["x"][row, size:].abs().sum() == 0 and out["adj"][row, size:].abs().sum() == 0
            assert out["adj"][row, :, size:].abs().sum() == 0
            assert out["x"][row, :size].abs().sum() > 0
            assert torch.allclose(out["adj"][row], out["adj"][row].T)
    # candidates of one molecule differ (fresh noise), and depend only on that molecule's generator
    assert not torch.equal(out["x"][0], out["x"][1])
    again = model.propose({k: v[1:2] for k, v in state.items()}, model.denoise({k: v[1:2] for k, v in state.items()}, 1),
                          1, [torch.Generator().manual_seed(11)], m)
    assert torch.allclose(again["x"], out["x"][m:2 * m]) and torch.allclose(again["adj"], out["adj"][m:2 * m])


def test_x0_hat_is_tweedie_at_the_candidates_own_time_and_masked():
    for sde in (VESDE(0.1, 1.0, 5), VPSDE(0.1, 1.0, 5)):
        model = tiny_model(x_sde=sde, adj_sde=sde)
        state = mixed_size_state(model)
        level = 2
        t = model.time(level)
        for net in (model.x_network, model.adj_network):
            net.t = t  # the fake network's exact score is the point mass's score at this time
        x0 = model.x0_hat(state, model.denoise(state, level), level)
        flags = state["flags"]
        assert torch.allclose(x0["x"], model.x_network.target * flags[..., None], atol=1e-4)
        assert torch.allclose(x0["adj"], model.adj_network.target * flags[:, :, None] * flags[:, None, :], atol=1e-4)


def test_decoders_count_two_score_evaluations_per_step():
    model = tiny_model(num_steps=4)
    reward = lambda graphs: [0.0] * len(graphs)  # noqa: E731
    model.decode = lambda x0: [float(x0["x"][i].sum()) for i in range(x0["x"].shape[0])]
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    with torch.inference_mode():
        pretrained = PretrainedSampling().sample(model, reward, gens)
        best = BestOfN(2).sample(model, reward, gens)
        svdd = SVDD(PosteriorMeanValue(), num_candidates=3).sample(model, reward, gens)
    # pretrained: denoise at levels 0..3 plus one corrected-state score per step
    assert pretrained.stats.per_sample(3)["denoiser_calls"] == 4 + 4
    assert best.stats.per_sample(3)["denoiser_calls"] == 2 * 8
    # SVDD: M candidates per step, each scored at its corrected state and (for its value) at level k + 1
    assert svdd.stats.per_sample(3)["denoiser_calls"] == 1 + 3 * 4 + 3 * 3
    assert all(torch.isfinite(r.rewards).all() for r in (pretrained, best, svdd))
