"""GDSS score networks (shapes, masking, symmetry, equivariance, GCN/attention semantics) and the
conversion of GDSS's published checkpoint layout into safe checkpoint directories."""
import json
import math
import sys
import types

import pytest
import torch

from svdd_lightning.checkpoints import load
from svdd_lightning.domains.molecules.gdss_checkpoint import convert_gdss_checkpoint, main
from svdd_lightning.domains.molecules.score_networks import (Attention, DenseGCNConv, ScoreNetworkA, ScoreNetworkX,
                                                             ScoreNetworkX_GMH)

N, F = 6, 4
X_PARAMS = {"max_feat_num": F, "depth": 2, "nhid": 8}
GMH_PARAMS = {"max_feat_num": F, "depth": 2, "nhid": 8, "num_linears": 2, "c_init": 2, "c_hid": 4, "c_final": 3,
              "adim": 8, "num_heads": 2, "conv": "GCN"}
ADJ_PARAMS = {"max_feat_num": F, "max_node_num": N, "nhid": 8, "num_layers": 3, "num_linears": 2, "c_init": 2,
              "c_hid": 4, "c_final": 3, "adim": 8, "num_heads": 2, "conv": "GCN"}


class AttrDict(dict):
    """Stands in for GDSS's pickled config class: a dict whose items are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def graphs(batch=3, seed=0):
    """Noisy symmetric weighted adjacencies with masked nodes, as GDSS's networks see them."""
    g = torch.Generator().manual_seed(seed)
    flags = torch.zeros(batch, N)
    for b, size in enumerate([N, 4, 2][:batch]):
        flags[b, :size] = 1
    x = torch.randn(batch, N, F, generator=g) * flags.unsqueeze(-1)
    upper = torch.randn(batch, N, N, generator=g).triu(1)
    adj = (upper + upper.transpose(-1, -2)) * flags.unsqueeze(-1) * flags.unsqueeze(-2)
    return x, adj, flags


def networks():
    torch.manual_seed(0)
    return {"x": ScoreNetworkX(**X_PARAMS), "gmh": ScoreNetworkX_GMH(**GMH_PARAMS),
            "mlp_gmh": ScoreNetworkX_GMH(**{**GMH_PARAMS, "conv": "MLP"}), "adj": ScoreNetworkA(**ADJ_PARAMS)}


@torch.no_grad()
def test_shapes_masking_and_symmetry():
    x, adj, flags = graphs()
    nets = networks()
    for name in ("x", "gmh", "mlp_gmh"):
        out = nets[name](x, adj, flags)
        assert out.shape == (3, N, F)
        assert torch.all(out[flags == 0] == 0) and out[flags == 1].abs().sum() > 0
    score = nets["adj"](x, adj, flags)
    assert score.shape == (3, N, N)
    assert torch.allclose(score, score.transpose(-1, -2), atol=1e-6)
    assert torch.all(score.diagonal(dim1=-2, dim2=-1) == 0)
    absent = (1 - flags.unsqueeze(-1) * flags.unsqueeze(-2)).bool()
    assert torch.all(score[absent] == 0) and score[~absent].abs().sum() > 0


@torch.no_grad()
@pytest.mark.parametrize("name", ["x", "gmh", "adj"])
def test_permutation_equivariance(name):
    x, adj, flags = graphs()
    net = networks()[name]
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    out = net(x, adj, flags)
    out_perm = net(x[:, perm], adj[:, perm][:, :, perm], flags[:, perm])
    expected = out[:, perm] if name != "adj" else out[:, perm][:, :, perm]
    assert torch.allclose(out_perm, expected, atol=1e-5)


@torch.no_grad()
def test_dense_gcn_conv_matches_explicit_formula():
    """Diagonal set (not added) to 1, degrees clamped below at 1, D^-1/2 A D^-1/2 X W + b."""
    torch.manual_seed(0)
    conv = DenseGCNConv(2, 3)
    conv.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    adj = torch.tensor([[5.0, 2.0, 0.0], [2.0, 0.0, -3.0], [0.0, -3.0, 0.0]])  # diagonal 5 is overwritten
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    a_hat = [[1.0, 2.0, 0.0], [2.0, 1.0, -3.0], [0.0, -3.0, 1.0]]
    deg = [max(sum(row), 1.0) for row in a_hat]  # 3, 1 (clamped from 0), 1 (clamped from -2)
    xw = (x @ conv.weight).tolist()
    expected = [[sum(a_hat[i][j] / math.sqrt(deg[i] * deg[j]) * xw[j][c] for j in range(3)) + conv.bias[c].item()
                 for c in range(3)] for i in range(3)]
    assert torch.allclose(conv(x.unsqueeze(0), adj.unsqueeze(0))[0], torch.tensor(expected), atol=1e-6)


@torch.no_grad()
def test_attention_heads_as_gdss_splits_them():
    """GDSS splits Q, K along features into heads stacked on the batch, tanh(QK^T / sqrt(out_dim)), head mean."""
    torch.manual_seed(0)
    attn = Attention(in_dim=F, attn_dim=8, out_dim=5, num_heads=2)
    x, adj, _ = graphs()
    v, a = attn(x, adj)
    q, k = attn.gnn_q(x, adj), attn.gnn_k(x, adj)
    q_, k_ = torch.cat(q.split(4, 2), 0), torch.cat(k.split(4, 2), 0)
    ref = torch.tanh(q_.bmm(k_.transpose(1, 2)) / math.sqrt(5)).view(-1, *adj.shape).mean(dim=0)
    assert torch.allclose(a, (ref + ref.transpose(-1, -2)) / 2, atol=1e-6)
    assert torch.allclose(v, attn.gnn_v(x, adj))


def write_checkpoint(path, config_cls=AttrDict, x_params=None):
    """A GDSS trainer checkpoint: pickled config, params, state dicts and EMA shadow lists."""
    x_params = x_params or {"model_type": "ScoreNetworkX", **X_PARAMS}
    torch.manual_seed(0)
    net_x = (ScoreNetworkX_GMH if x_params["model_type"] == "ScoreNetworkX_GMH" else ScoreNetworkX)(
        **{k: v for k, v in x_params.items() if k != "model_type"})
    net_adj = ScoreNetworkA(**ADJ_PARAMS)
    config = config_cls(
        data=config_cls(data="QM9", max_node_num=N, max_feat_num=F, init="atom"),
        sde=config_cls(x=config_cls(type="VE", beta_min=0.1, beta_max=1.0, num_scales=1000),
                       adj=config_cls(type="VP", beta_min=0.1, beta_max=1.0, num_scales=1000)),
        train=config_cls(ema=0.999, lr=0.005), seed=42)

    def ema(net):
        return {"decay": 0.999, "num_updates": 10,
                "shadow_params": [p.detach() + 0.05 * torch.randn_like(p) for p in net.parameters()]}

    ckpt = {"model_config": config, "params_x": x_params, "params_adj": {"model_type": "ScoreNetworkA", **ADJ_PARAMS},
            "x_state_dict": net_x.state_dict(), "adj_state_dict": net_adj.state_dict(),
            "ema_x": ema(net_x), "ema_adj": ema(net_adj)}
    torch.save(ckpt, path)
    return ckpt, net_x, net_adj


def with_shadow(net, shadow):
    net = type(net)(**net._init_args)
    with torch.no_grad():
        for p, s in zip(net.parameters(), shadow):
            p.copy_(s)
    return net


@torch.no_grad()
def test_convert_needs_trust_for_pickled_config_then_writes_safe_checkpoints(tmp_path):
    src = tmp_path / "gdss.pth"
    ckpt, net_x, net_adj = write_checkpoint(src)
    with pytest.raises(ValueError, match="--trust-pickle") as err:
        convert_gdss_checkpoint(src, tmp_path / "out")
    assert "AttrDict" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()

    paths = convert_gdss_checkpoint(src, tmp_path / "out", trust_pickle=True)
    assert set(paths) == {"x", "adj", "config"}
    x, adj, flags = graphs()
    ema_x = with_shadow(net_x, ckpt["ema_x"]["shadow_params"])
    ema_adj = with_shadow(net_adj, ckpt["ema_adj"]["shadow_params"])
    loaded_x, loaded_adj = load(paths["x"]), load(paths["adj"])
    assert isinstance(loaded_x, ScoreNetworkX) and isinstance(loaded_adj, ScoreNetworkA)
    assert torch.equal(loaded_x(x, adj, flags), ema_x(x, adj, flags))
    assert torch.equal(loaded_adj(x, adj, flags), ema_adj(x, adj, flags))
    assert not torch.equal(loaded_x(x, adj, flags), net_x(x, adj, flags))

    config = json.loads(paths["config"].read_text())
    assert config["data"]["max_node_num"] == N and config["data"]["atomic_num_list"] == [6, 7, 8, 9, 0]
    assert config["sde"]["x"]["type"] == "VE" and config["sde"]["adj"]["type"] == "VP"
    assert config["sampler"]["scale_eps"] == 0.7 and config["weights"] == {"x": "ema", "adj": "ema"}
    assert config["params_adj"]["c_init"] == 2

    raw = convert_gdss_checkpoint(src, tmp_path / "raw", trust_pickle=True, use_ema=False)
    assert torch.equal(load(raw["x"])(x, adj, flags), net_x(x, adj, flags))
    assert torch.equal(load(raw["adj"])(x, adj, flags), net_adj(x, adj, flags))


@torch.no_grad()
def test_easydict_config_loads_without_trust(tmp_path, monkeypatch):
    """GDSS's easydict.EasyDict is read as plain data under weights_only=True, even without easydict installed."""
    class EasyDict(dict):
        def __init__(self, **items):
            super().__init__()
            for key, value in items.items():
                setattr(self, key, value)

        def __setattr__(self, name, value):
            super().__setattr__(name, value)
            self[name] = value

    EasyDict.__module__, EasyDict.__qualname__ = "easydict", "EasyDict"
    monkeypatch.setitem(sys.modules, "easydict", types.SimpleNamespace(EasyDict=EasyDict))
    src = tmp_path / "gdss.pth"
    write_checkpoint(src, config_cls=EasyDict, x_params={"model_type": "ScoreNetworkX_GMH", **GMH_PARAMS})
    monkeypatch.delitem(sys.modules, "easydict")
    paths = convert_gdss_checkpoint(src, tmp_path / "out")
    assert isinstance(load(paths["x"]), ScoreNetworkX_GMH)
    config = json.loads(paths["config"].read_text())
    assert config["seed"] == 42 and config["train"] == {"ema": 0.999, "lr": 0.005}


def test_unknown_model_type_is_one_line(tmp_path):
    src = tmp_path / "gdss.pth"
    write_checkpoint(src, x_params={"model_type": "ScoreNetworkY", **X_PARAMS})
    with pytest.raises(ValueError, match="model_type 'ScoreNetworkY' is unknown") as err:
        convert_gdss_checkpoint(src, tmp_path / "out", trust_pickle=True)
    assert "\n" not in str(err.value)


def test_cli(tmp_path, capsys):
    src = tmp_path / "gdss.pth"
    write_checkpoint(src)
    assert main([str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--trust-pickle" in err
    assert main([str(src), str(tmp_path / "out"), "--trust-pickle", "--no-ema"]) == 0
    out = capsys.readouterr().out
    assert "ScoreNetworkX, raw weights" in out and "gdss_config.json" in out
    assert (tmp_path / "out" / "adj" / "model.safetensors").is_file()
