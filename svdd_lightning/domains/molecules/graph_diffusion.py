"""Score-based graph diffusion (GDSS) as a :class:`DiffusionModel` for the SVDD decoders.

A state is a dict of batched tensors: node features ``x`` (B, N, F), adjacency ``adj`` (B, N, N)
and the node mask ``flags`` (B, N). Every operation the decoders apply (repeat a row for its M
candidates, index the chosen rows) acts on all three together, so a candidate always keeps its own
molecule's node mask, whatever the sizes in the batch.

Sampling follows GDSS's predictor-corrector sampler over ``num_steps`` times t_k from 1 to ``eps``:
at each step a Langevin corrector move (signal-to-noise ``snr``, noise scaled by ``scale_eps``; its
step size from each graph's own score and noise norms, where GDSS averages them over the batch),
then a reverse-diffusion predictor move, for X and A jointly; the last step keeps the predictor's
mean (no noise). One step costs two score evaluations: ``denoise`` gives the score at the current
state (the corrector's and, through Tweedie, the value's), ``propose`` evaluates it once more at
each corrected candidate (``proposal_denoiser_calls = 1``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ...checkpoints import Configurable
from ...core.model import DiffusionModel
from .sde import SDE, VPSDE

GraphState = dict[str, torch.Tensor]


def mask_nodes(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Zero the feature rows of absent nodes."""
    return x * flags.unsqueeze(-1)


def mask_adjacency(adj: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Zero the rows and columns of absent nodes."""
    return adj * flags.unsqueeze(-1) * flags.unsqueeze(-2)


def symmetric_noise(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise for an (N, N) adjacency: symmetric, zero diagonal."""
    upper = torch.randn(shape, generator=generator).triu(1)
    return upper + upper.transpose(-1, -2)


class GraphDiffusion(Configurable, DiffusionModel):
    """GDSS: node features and adjacency diffusing by their own SDEs, scored by two networks.

    ``x_network(x, adj, flags)`` and ``adj_network(x, adj, flags)`` are GDSS's ScoreNetworkX and
    ScoreNetworkA (no time input). As in GDSS, a VE component's score is the network output and a
    VP component's is -output / s(t). ``num_nodes_probs[n - 1]`` is the probability of a molecule
    with n atoms (the training set's sizes, set by the pretraining module; the prior draws the size
    first). ``atoms`` names
    the feature channels (decoding to molecules is the job of :mod:`.graphs`).

    Args:
        x_network: GDSS's ScoreNetworkX for the node features.
        adj_network: GDSS's ScoreNetworkA for the adjacency.
        x_sde: the SDE of the node features (VE or VP).
        adj_sde: the SDE of the adjacency.
        atoms: the element of each feature channel.
        max_nodes: the largest number of atoms.
        num_nodes_probs: probability of each molecule size 1 .. max_nodes (the training set's).
        num_steps: sampling steps of the predictor-corrector sampler.
        snr: signal-to-noise ratio of the Langevin corrector.
        scale_eps: scale of the corrector's noise.
        eps: the last time of the sampling grid (t runs from 1 to eps).
    """

    proposal_denoiser_calls = 1

    def __init__(self, x_network: nn.Module, adj_network: nn.Module, x_sde: SDE, adj_sde: SDE,
                 atoms: Sequence[str], max_nodes: int, num_nodes_probs: Sequence[float] | None = None,
                 num_steps: int = 1000, snr: float = 0.2, scale_eps: float = 0.7, eps: float = 1e-3) -> None:
        super().__init__()
        self.x_network, self.adj_network = x_network, adj_network
        # the reverse-diffusion predictor steps on the sampler's grid (GDSS: num_scales = sampling steps)
        self.x_sde, self.adj_sde = x_sde.discretised(num_steps), adj_sde.discretised(num_steps)
        self.atoms, self.max_nodes = tuple(atoms), max_nodes
        self.num_nodes_probs: torch.Tensor | None = None
        if num_nodes_probs is not None:
            self.set_num_nodes_probs(num_nodes_probs)
        self.num_steps, self.snr, self.scale_eps, self.eps = num_steps, snr, scale_eps, eps

    def set_num_nodes_probs(self, probs: Sequence[float]) -> None:
        """Set the prior's molecule-size distribution (e.g. from the training set; saved with the model)."""
        probs = [float(p) for p in probs]
        if len(probs) != self.max_nodes or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-4:
            raise ValueError(f"GraphDiffusion.num_nodes_probs must be {self.max_nodes} probabilities (sizes 1.."
                             f"{self.max_nodes}) summing to 1")
        self.num_nodes_probs = torch.tensor(probs, dtype=torch.float64)
        self._init_args["num_nodes_probs"] = probs

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # --- time ----------------------------------------------------------------------------------------
    def time(self, level: int) -> float:
        """t_k on GDSS's grid linspace(1, eps, num_steps); the clean level has t = 0."""
        if level >= self.num_steps:
            return 0.0
        return 1.0 - level * (1.0 - self.eps) / max(self.num_steps - 1, 1)

    def _times(self, level: int, n: int) -> torch.Tensor:
        return torch.full((n,), self.time(level), device=self._device())

    # --- the chain -------------------------------------------------------------------------------------
    def initial_state(self, generators: Sequence[torch.Generator], conditions: torch.Tensor | None = None) -> GraphState:
        if self.num_nodes_probs is None:
            raise ValueError("GraphDiffusion.num_nodes_probs is not set: give the training set's molecule sizes")
        n, f = self.max_nodes, len(self.atoms)
        sizes = [int(torch.multinomial(self.num_nodes_probs, 1, generator=g)) + 1 for g in generators]
        flags = torch.stack([(torch.arange(n) < size).float() for size in sizes])
        x = torch.stack([torch.randn((n, f), generator=g) for g in generators]) * self.x_sde.prior_std()
        adj = torch.stack([symmetric_noise((n, n), g) for g in generators]) * self.adj_sde.prior_std()
        state = {"x": mask_nodes(x, flags), "adj": mask_adjacency(adj, flags), "flags": flags}
        return {key: value.to(self._device()) for key, value in state.items()}  # drawn on the CPU, moved once

    def _scores(self, state: GraphState, t: torch.Tensor) -> GraphState:
        """The X and A scores (float32) at times ``t``, on the model's device."""
        device = self._device()
        x, adj, flags = (state[k].to(device) for k in ("x", "adj", "flags"))
        t = t.to(device)
        scores = {}
        for key, network, sde in (("x", self.x_network, self.x_sde), ("adj", self.adj_network, self.adj_sde)):
            out = network(x, adj, flags).float()
            if isinstance(sde, VPSDE):
                out = -out / sde.marginal(t)[1].view(-1, *([1] * (out.dim() - 1)))
            scores[key] = out
        return scores

    def denoise(self, x: GraphState, level: int) -> GraphState:
        """The scores of X and A at the state's time (one evaluation of each network per row)."""
        return self._scores(x, self._times(level, x["flags"].shape[0]))

    def propose(self, x: GraphState, prediction: GraphState, level: int, generators: Sequence[torch.Generator],
                num_candidates: int) -> GraphState:
        m, b = num_candidates, x["flags"].shape[0]
        state = {k: v.to(self._device()).repeat_interleave(m, dim=0) for k, v in x.items()}
        scores = {k: prediction[k].repeat_interleave(m, dim=0) for k in ("x", "adj")}
        flags, t = state["flags"], self._times(level, b * m)
        noise = self._noise(generators, m, 2)
        # Langevin corrector with the score at the current state
        state = self._langevin(state, scores, t, noise[0])
        # reverse-diffusion predictor with the score at the corrected state (plus DPS's guidance term)
        scores = self._scores(state, t)
        if "x_guidance" in prediction:
            scores["x"] = scores["x"] + prediction["x_guidance"].repeat_interleave(m, dim=0)
        last = level == self.num_steps - 1
        out = {"flags": flags}
        for key, sde in (("x", self.x_sde), ("adj", self.adj_sde)):
            mean, std = sde.reverse_step(state[key], scores[key], t)
            out[key] = mean if last else mean + std * noise[1][key]
        out["x"], out["adj"] = mask_nodes(out["x"], flags), mask_adjacency(out["adj"], flags)
        return out

    def guided_prediction(self, x: GraphState, level: int, guidance, scale: float) -> GraphState:
        """DPS: the X score plus ``scale`` x the gradient, with respect to X_t, of ``guidance`` at Tweedie's
        x0_hat (through the X score network; A is not guided, as in the paper). The gradient is also kept
        as ``x_guidance`` so that :meth:`propose` adds it to the predictor's score at the corrected state."""
        t = self._times(level, x["flags"].shape[0])
        features = x["x"].detach().requires_grad_(True)
        state = {"x": features, "adj": x["adj"].detach(), "flags": x["flags"]}
        scores = self._scores(state, t)
        scores["adj"] = scores["adj"].detach()
        x0 = self.x0_hat(state, scores, level)
        (grad,) = torch.autograd.grad(guidance(x0).sum(), features)
        grad = mask_nodes(scale * grad.detach(), x["flags"])
        return {"x": scores["x"].detach() + grad, "adj": scores["adj"], "x_guidance": grad}

    def _noise(self, generators: Sequence[torch.Generator], m: int, moves: int) -> list[GraphState]:
        """Per move, standard noise for X and (symmetric) A; candidate j of row b uses generators[b]. Drawn
        on the CPU (a sample is the same on every device), moved to the model's device in one transfer."""
        n, f = self.max_nodes, len(self.atoms)
        draws = [[({"x": torch.randn((n, f), generator=g), "adj": symmetric_noise((n, n), g)})
                  for _ in range(m * moves)] for g in generators]
        stacked = [[torch.stack([row[j * moves + move][key] for row in draws for j in range(m)]).flatten(1)
                    for key in ("x", "adj")] for move in range(moves)]
        flat = torch.stack([torch.cat(keys, dim=1) for keys in stacked]).to(self._device())  # one transfer
        return [{"x": flat[move, :, : n * f].view(-1, n, f), "adj": flat[move, :, n * f:].view(-1, n, n)}
                for move in range(moves)]

    def _langevin(self, state: GraphState, scores: GraphState, t: torch.Tensor, noise: GraphState) -> GraphState:
        flags = state["flags"]
        out = {"flags": flags}
        for key, sde in (("x", self.x_sde), ("adj", self.adj_sde)):
            z = mask_nodes(noise[key], flags) if key == "x" else mask_adjacency(noise[key], flags)
            grad = scores[key]
            # GDSS averages the norms over the batch; per graph, a sample does not depend on its batch
            grad_norm, noise_norm = grad.flatten(1).norm(dim=1), z.flatten(1).norm(dim=1)
            step = (self.snr * noise_norm / grad_norm.clamp_min(1e-12)) ** 2 * 2 * sde.langevin_alpha(t)
            step = step.view(-1, *([1] * (grad.dim() - 1)))
            out[key] = state[key] + step * grad + (2 * step).sqrt() * z * self.scale_eps
        out["x"], out["adj"] = mask_nodes(out["x"], flags), mask_adjacency(out["adj"], flags)
        return out

    # --- values and samples ----------------------------------------------------------------------------
    def x0_hat(self, x: GraphState, prediction: GraphState, level: int) -> GraphState:
        """Tweedie's E[x_0 | x_t] for X and A at the state's own time, masked by its own flags."""
        t, flags = self._times(level, x["flags"].shape[0]), x["flags"]
        return {"x": mask_nodes(self.x_sde.tweedie(x["x"], prediction["x"], t), flags),
                "adj": mask_adjacency(self.adj_sde.tweedie(x["adj"], prediction["adj"], t), flags),
                "flags": flags}

    def x0_estimate(self, x: GraphState, prediction: GraphState, level: int, num_steps: int) -> GraphState:
        """DDIM (eta = 0) from the state's time to t = 0 in ``num_steps`` equal steps, for X and A:
        x_0 by Tweedie, then x_next = m(t') x_0 + s(t') (x - m(t) x_0) / s(t); the last step is Tweedie's x_0."""
        flags, n = x["flags"], x["flags"].shape[0]
        grid = torch.linspace(self.time(level), 0.0, num_steps + 1).tolist()
        state, scores = x, prediction
        for j in range(num_steps):
            t = torch.full((n,), grid[j], device=flags.device)
            if j:
                scores = self._scores(state, t)
            x0 = {key: sde.tweedie(state[key], scores[key], t)
                  for key, sde in (("x", self.x_sde), ("adj", self.adj_sde))}
            if j + 1 < num_steps:
                following = {"flags": flags}
                for key, sde in (("x", self.x_sde), ("adj", self.adj_sde)):
                    (mean, std), (mean_next, std_next) = (
                        (v.view(-1, 1, 1) for v in sde.marginal(s))
                        for s in (t, torch.full((n,), grid[j + 1], device=flags.device)))
                    following[key] = mean_next * x0[key] + std_next * (state[key] - mean * x0[key]) / std
                state = following
        return {"x": mask_nodes(x0["x"], flags), "adj": mask_adjacency(x0["adj"], flags), "flags": flags}

    def x0_samples(self, x: GraphState, prediction: GraphState, level: int, generators: Sequence[torch.Generator],
                   num_samples: int, num_steps: int) -> GraphState:
        """x_0 drawn by ``num_steps`` ancestral (DDPM-posterior) steps on an even grid from the state's time to
        0, for X and A: x_0 by Tweedie, then x_next ~ q(x_next | x, x_0); the last step returns Tweedie's x_0
        (so one step is the deterministic estimate)."""
        n = num_samples
        state = {k: v.repeat_interleave(n, dim=0) for k, v in x.items()}
        scores = {k: prediction[k].repeat_interleave(n, dim=0) for k in ("x", "adj")}
        rows, flags, size = [g for g in generators for _ in range(n)], state["flags"], state["flags"].shape[0]
        grid = torch.linspace(self.time(level), 0.0, num_steps + 1).tolist()
        for j in range(num_steps):
            t = torch.full((size,), grid[j], device=flags.device)
            if j:
                scores = self._scores(state, t)
            x0 = {key: sde.tweedie(state[key], scores[key], t) for key, sde in (("x", self.x_sde), ("adj", self.adj_sde))}
            if j + 1 == num_steps:
                break
            noise = self._noise(rows, 1, 1)[0]
            following = {"flags": flags}
            for key, sde in (("x", self.x_sde), ("adj", self.adj_sde)):
                (m, s), (m_next, s_next) = ((v.view(-1, 1, 1) for v in sde.marginal(u))
                                            for u in (t, torch.full((size,), grid[j + 1], device=flags.device)))
                a = m / m_next  # x_t = a x_next + noise of variance s^2 - a^2 s_next^2
                var = (s_next**2 * (s**2 - a**2 * s_next**2) / s**2).clamp_min(0)
                mean = m_next * x0[key] + a * s_next**2 / s**2 * (state[key] - m * x0[key])
                following[key] = mean + var.sqrt() * noise[key]
            following["x"], following["adj"] = mask_nodes(following["x"], flags), mask_adjacency(following["adj"], flags)
            state = following
        return {"x": mask_nodes(x0["x"], flags), "adj": mask_adjacency(x0["adj"], flags), "flags": flags}

    def forward_noise(self, x0: GraphState, level: int, generators: Sequence[torch.Generator]) -> GraphState:
        """x_t = m(t) x_0 + s(t) z for X and (symmetric) A."""
        t = self._times(level, x0["flags"].shape[0])
        noise = self._noise(generators, 1, 1)[0]
        out = {"flags": x0["flags"]}
        for key, sde in (("x", self.x_sde), ("adj", self.adj_sde)):
            mean, std = (v.view(-1, 1, 1) for v in sde.marginal(t))
            out[key] = mean * x0[key] + std * noise[key]
        out["x"], out["adj"] = mask_nodes(out["x"], x0["flags"]), mask_adjacency(out["adj"], x0["flags"])
        return out

    def decode(self, x0: GraphState) -> list[str]:
        """Canonical SMILES of each graph ("" when it is not a valid molecule)."""
        from .graphs import graphs_to_molecules, to_smiles

        return to_smiles(graphs_to_molecules(x0["x"], x0["adj"], x0["flags"], self.atoms))

    def sample_files(self):
        """A decoding run writes this model's samples as SMILES files and drawings of the best."""
        from .outputs import MoleculeFiles

        return MoleculeFiles()
