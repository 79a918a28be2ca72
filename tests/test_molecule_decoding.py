"""Molecule decoding: selection every k steps, multi-step x_0 estimates, DPS on graphs, graph rollouts,
the GIN value network, and the value-training and compare jobs end to end on the shipped QM9 model."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from svdd_lightning import DPS, SVDD, PosteriorMeanValue, ProxyGuided, checkpoints
from svdd_lightning.core.run import Candidates, Run
from svdd_lightning.core.reward import guard
from svdd_lightning.domains.molecules.graph_diffusion import GraphDiffusion
from svdd_lightning.domains.molecules.sde import VESDE, VPSDE
from svdd_lightning.domains.molecules.value_networks import GraphGIN
from svdd_lightning.lightning.rollouts import RolloutDataModule, generate_rollouts

from test_graph_diffusion import N, mixed_size_state, tiny_model
from tiny_dna import run_main
from svdd_lightning.yaml_keys import read_config

QM9 = "checkpoints/molecules/gdss_qm9"


def float_samples(model: GraphDiffusion) -> None:
    """Decode graphs to distinct floats, so every candidate is scored (no deduplication)."""
    model.decode = lambda x0: [float(x0["x"][i].sum()) for i in range(x0["x"].shape[0])]


def test_svdd_selecting_every_k_steps_keeps_the_denoiser_cost_and_scores_k_times_less(inference_mode):
    model = tiny_model(num_steps=6)
    float_samples(model)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    every_step = SVDD(PosteriorMeanValue(), num_candidates=3).sample(model, lambda s: s, gens())
    every_third = SVDD(PosteriorMeanValue(), num_candidates=3, select_every=3).sample(model, lambda s: s, gens())
    assert every_step.stats.denoiser_calls == every_third.stats.denoiser_calls == 3 * 34
    assert every_step.stats.reward_calls == 3 * (6 * 3 + 1) and every_third.stats.reward_calls == 3 * (2 * 3 + 1)
    # a sample depends on its own generator only, not on the batch it is decoded with
    alone = SVDD(PosteriorMeanValue(), num_candidates=3, select_every=3).sample(
        model, lambda s: s, [torch.Generator().manual_seed(1)])
    assert torch.allclose(alone.x0["x"][0], every_third.x0["x"][1])
    with pytest.raises(ValueError, match="SVDD.select_every"):
        SVDD(PosteriorMeanValue(), select_every=0)
    with pytest.raises(ValueError, match="x0_steps"):
        PosteriorMeanValue(x0_steps=0)


@pytest.mark.parametrize("sde", [VESDE(0.1, 1.0, 5), VPSDE(0.1, 1.0, 5)], ids=["VE", "VP"])
def test_multi_step_x0_estimate_is_exact_for_the_exact_score_and_counted(sde, inference_mode):
    """With the exact score of a point mass at every time, each DDIM step lands on the point mass."""
    model = tiny_model(x_sde=sde, adj_sde=sde)
    targets = {"x": model.x_network.target, "adj": model.adj_network.target}

    def exact_scores(state, t):
        out = {}
        for key, comp in (("x", model.x_sde), ("adj", model.adj_sde)):
            mean, std = (v.view(-1, 1, 1) for v in comp.marginal(t))
            out[key] = -(state[key] - mean * targets[key]) / std**2
        return out

    model._scores = exact_scores
    state = mixed_size_state(model)
    run = Run(model, guard(lambda s: [0.0] * len(s)), range(3))
    candidates = Candidates(run, state, 1)
    x0 = candidates.x0_hat(num_steps=4)
    flags = state["flags"]
    assert torch.allclose(x0["x"], targets["x"] * flags[..., None], atol=1e-4)
    assert torch.allclose(x0["adj"], targets["adj"] * flags[:, :, None] * flags[:, None, :], atol=1e-4)
    assert run.stats.denoiser_calls == 3 * 1 + 3 * 3  # the candidates' own prediction, then 3 more steps


def test_load_overrides_resample_the_grid_and_unknown_arguments_are_one_line():
    model = checkpoints.load(QM9, overrides={"num_steps": 50})
    assert model.num_steps == 50 and model.x_sde.num_scales == model.adj_sde.num_scales == 50
    with pytest.raises(ValueError, match="model_args: \\['steps'\\] are not constructor arguments"):
        checkpoints.load(QM9, overrides={"steps": 50})


def test_dps_guides_node_features_only_through_the_proxy(inference_mode):
    model = tiny_model(num_steps=4)
    state = mixed_size_state(model)
    carbon = lambda x0: x0["x"][..., 0].sum(dim=1)  # noqa: E731
    with torch.inference_mode(False), torch.enable_grad():
        guided = model.guided_prediction({k: v.clone() for k, v in state.items()}, 1, carbon, 2.0)
    plain = model.denoise(state, 1)
    assert torch.allclose(guided["adj"], plain["adj"])
    assert torch.allclose(guided["x"] - plain["x"], guided["x_guidance"], atol=1e-6)
    assert (guided["x_guidance"][..., 0] * state["flags"]).abs().sum() > 0
    assert guided["x_guidance"][..., 1:].abs().sum() == 0  # only the carbon channel moves the proxy
    assert guided["x_guidance"][state["flags"] == 0].abs().sum() == 0
    float_samples(model)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]

    class Proxy(torch.nn.Module):
        def forward(self, x0, t):
            return carbon(x0)

    reward = ProxyGuided(lambda s: list(s), Proxy())
    result = DPS(scale=1.0).sample(model, reward, gens)
    assert result.stats.gradient_calls == 3 * 4 and torch.isfinite(result.rewards).all()


def test_graph_rollouts_are_cached_as_leaves_and_batched_as_graphs(tmp_path):
    model = checkpoints.load(QM9, overrides={"num_steps": 6})
    with torch.inference_mode():
        data = generate_rollouts(model, lambda s: [float(bool(x)) for x in s], range(4), seed=0, levels_per_rollout=2)
    assert data["x"]["x"].shape == (8, 9, 4) and data["x_next"]["adj"].shape == (8, 9, 9)

    def module() -> RolloutDataModule:
        return RolloutDataModule(QM9, lambda s: [float(bool(x)) for x in s], num_rollouts=4, val_rollouts=4,
                                 levels_per_rollout=2, shard_size=4, cache_dir=str(tmp_path), batch_size=3,
                                 model_args={"num_steps": 6})

    first = module()
    first.setup("fit")
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["train-00000.safetensors", "val-00000.safetensors"]
    second = module()
    second.setup("fit")  # from the cache
    assert torch.equal(first._data["train"]["x"]["adj"], second._data["train"]["x"]["adj"])
    x, t, reward, x_next, t_next = next(iter(DataLoader(second._dataset("train"), batch_size=3)))
    assert set(x) == {"x", "adj", "flags"} and x["adj"].shape == (3, 9, 9) and t.shape == reward.shape == (3,)


def test_gin_value_ignores_absent_nodes_and_depends_on_time():
    net = GraphGIN(num_features=4, hidden=16, num_layers=2, time_dim=8).eval()
    gens = torch.Generator().manual_seed(0)
    flags = torch.stack([(torch.arange(N) < n).float() for n in (2, 5)])
    state = {"x": torch.randn(2, N, 4, generator=gens) * flags[..., None],
             "adj": torch.randn(2, N, N, generator=gens) * flags[:, :, None] * flags[:, None, :], "flags": flags}
    noisy = {k: v.clone() for k, v in state.items()}
    noisy["x"][0, 2:] = 5.0  # rows of absent nodes
    noisy["adj"][0, 2:, :] = 3.0
    noisy["adj"][0, :, 2:] = 3.0
    t = torch.tensor([0.3, 0.7])
    assert torch.allclose(net(state, t), net(noisy, t), atol=1e-5)
    assert not torch.allclose(net(state, t), net(state, torch.tensor([0.9, 0.1])))


def reward_with_failures(smiles):
    """QED-like reward that raises on molecules with a nitrogen and returns None for fluorine."""
    if any("N" in s for s in smiles):
        raise RuntimeError("simulated crash")
    return [None if "F" in s else float(len(s)) for s in smiles]


def test_a_reward_that_raises_or_returns_none_does_not_stop_decoding(inference_mode):
    model = checkpoints.load(QM9, overrides={"num_steps": 8})
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    result = SVDD(PosteriorMeanValue(), num_candidates=3).sample(model, reward_with_failures, gens)
    assert len(result.samples) == 6 and torch.isfinite(result.rewards).all()
    assert result.stats.reward_failures > 0


@pytest.fixture(scope="module")
def value_network(tmp_path_factory) -> Path:
    """``train.py fit`` with the shipped value-network config, on a few rollouts of a 6-step grid."""
    root = tmp_path_factory.mktemp("value")
    run_main("train.py", "fit", "--config", "configs/molecules/value_mc_qed.yaml",
             "--data.init_args.model_args", '{"num_steps": 6}', "--data.init_args.num_rollouts", "16",
             "--data.init_args.val_rollouts", "16", "--data.init_args.shard_size", "16",
             "--data.init_args.levels_per_rollout", "2", "--data.init_args.cache_dir", str(root / "rollouts"),
             "--data.init_args.reward.init_args.processes", "1", "--data.init_args.batch_size", "8",
             "--model.init_args.network.init_args.hidden", "16", "--trainer.max_epochs", "1",
             "--trainer.default_root_dir", str(root / "runs"), "--trainer.enable_progress_bar", "false",
             "--trainer.callbacks.init_args.directory", str(root / "export"))
    assert isinstance(checkpoints.load(root / "export"), GraphGIN)
    assert "val/mse" in checkpoints.metadata(root / "export")
    return root / "export"


def test_compare_job_writes_molecule_outputs_for_every_method(value_network, tmp_path):
    config = read_config("configs/molecules/compare_qed.yaml")
    model = config["model"]
    model["model_args"] = {"num_steps": 6}
    model["max_failure_fraction"] = None  # a 6-step grid may give only invalid molecules in a batch
    model["reward"]["init_args"]["reward"]["init_args"]["processes"] = 1
    model["reward"]["init_args"]["proxy"] = str(value_network)
    methods = model["methods"]
    methods["best_of_n"]["init_args"]["n"] = 2
    methods["smc"]["init_args"]["value"]["init_args"]["network"] = str(value_network)
    methods["svdd_mc"]["init_args"]["value"]["init_args"]["network"] = str(value_network)
    for name in ("svdd_pm", "svdd_mc"):
        methods[name]["init_args"]["num_candidates"] = 2
    methods["svdd_pm"]["init_args"]["select_every"] = 3
    methods["svdd_pm"]["init_args"]["value"]["init_args"]["x0_steps"] = 2
    config["data"] = {"num_samples": 4, "batch_size": 2}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    run_main("decode.py", "predict", "--config", str(path), "--output_dir", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pretrained", "best_of_n", "dps", "smc", "svdd_pm", "svdd_mc"}
    for method, entry in summary.items():
        assert entry["n"] == 4 and 0 <= entry["validity"] <= 1 and 0 <= entry["novelty"] <= 1
        assert entry["valid"]["mean"] == pytest.approx(entry["validity"])
        assert (out / f"{method}.smi").read_text().count("\n") == 4
    assert summary["dps"]["per_sample"]["gradient_calls"] == 6
    with open(out / "samples.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"method", "index", "smiles", "reward", "valid", "qed", "sa"} <= set(rows[0])
    assert all((r["smiles"] == "") == (r["valid"] == "0.0") for r in rows)
    assert list(out.glob("*_best.png"))
