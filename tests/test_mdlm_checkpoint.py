"""MDLM checkpoint loading, on tiny random checkpoints written in MDLM's Lightning layout."""
from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from svdd_lightning import checkpoints
from svdd_lightning.core.decoders import SVDD
from svdd_lightning.core.value import PosteriorMeanValue
from svdd_lightning.diffusion import MaskedDiffusion, MDLMTransformer, load_mdlm_checkpoint

ALPHABET = "ACGT"
ARCH = dict(vocab_size=5, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=2)


def random_transformer(seed: int) -> MDLMTransformer:
    """A tiny DIT with every parameter random (MDLM zero-initialises adaLN and the output layer)."""
    torch.manual_seed(seed)
    model = MDLMTransformer(**ARCH)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model.eval()


def write_mdlm_ckpt(path, model: MDLMTransformer, ema_from: MDLMTransformer | None = None,
                    hparams: dict | None = None) -> None:
    """Save like MDLM's Lightning run: backbone.* state dict, EMA shadow list, config, counters."""
    ckpt = {
        "state_dict": {"backbone." + k: v.clone() for k, v in model.state_dict().items()},
        "hyper_parameters": hparams if hparams is not None else {
            "config": {"backbone": "dit", "parameterization": "subs", "time_conditioning": False,
                       "model": {"name": "tiny", "type": "ddit", "hidden_size": 32, "cond_dim": 16, "n_blocks": 2,
                                 "n_heads": 2, "scale_by_sigma": True, "dropout": 0.1}}},
        "epoch": 3,
        "global_step": 1000,
    }
    if ema_from is not None:
        ckpt["ema"] = {"decay": 0.9999, "num_updates": 1000,
                       "shadow_params": [p.detach().clone() for p in ema_from.parameters() if p.requires_grad]}
    torch.save(ckpt, path)


def reference_dit(state: dict, x: torch.Tensor, sigma: torch.Tensor, n_heads: int) -> torch.Tensor:
    """MDLM's DIT forward written out from its state dict (explicit softmax attention)."""
    def norm(h, w):
        return F.layer_norm(h, h.shape[-1:]) * w

    def linear(h, name, bias=True):
        return h @ state[name + ".weight"].T + (state[name + ".bias"] if bias else 0)

    h = state["vocab_embed.embedding"][x]
    n, length, dim = h.shape
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    t_freq = torch.cat([torch.cos(sigma[:, None] * freqs), torch.sin(sigma[:, None] * freqs)], -1)
    c = F.silu(linear(F.silu(linear(t_freq, "sigma_map.mlp.0")), "sigma_map.mlp.2"))
    head = dim // n_heads
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head, 2).float() / head)
    ang = torch.arange(length).float()[:, None] * inv_freq
    cos, sin = ang.cos(), ang.sin()  # (L, head/2)

    def rope(z):  # z: (N, L, H, head); rotate (first half, second half) pairs
        a, b = z[..., : head // 2], z[..., head // 2:]
        cc, ss = cos[None, :, None], sin[None, :, None]
        return torch.cat([a * cc - b * ss, b * cc + a * ss], -1)

    i = 0
    while f"blocks.{i}.norm1.weight" in state:
        p = f"blocks.{i}."
        mods = linear(c, p + "adaLN_modulation")[:, None].chunk(6, dim=2)
        a = norm(h, state[p + "norm1.weight"]) * (1 + mods[1]) + mods[0]
        qkv = linear(a, p + "attn_qkv", bias=False).view(n, length, 3, n_heads, head)
        q, k, v = rope(qkv[:, :, 0]), rope(qkv[:, :, 1]), qkv[:, :, 2]
        att = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(head)
        a = torch.einsum("nhqk,nkhd->nqhd", att.softmax(-1), v).reshape(n, length, dim)
        h = h + mods[2] * linear(a, p + "attn_out", bias=False)
        m = norm(h, state[p + "norm2.weight"]) * (1 + mods[4]) + mods[3]
        m = linear(F.gelu(linear(m, p + "mlp.0"), approximate="tanh"), p + "mlp.2")
        h = h + mods[5] * m
        i += 1
    shift, scale = linear(c, "output_layer.adaLN_modulation")[:, None].chunk(2, dim=2)
    return linear(norm(h, state["output_layer.norm_final.weight"]) * (1 + scale) + shift, "output_layer.linear")


def test_state_dict_keys_match_mdlm_dit():
    keys = set(MDLMTransformer(**ARCH).state_dict())
    expected = {"vocab_embed.embedding", "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias", "sigma_map.mlp.2.weight",
                "sigma_map.mlp.2.bias", "rotary_emb.inv_freq", "output_layer.norm_final.weight",
                "output_layer.linear.weight", "output_layer.linear.bias", "output_layer.adaLN_modulation.weight",
                "output_layer.adaLN_modulation.bias"}
    for i in range(2):
        expected |= {f"blocks.{i}.{name}" for name in (
            "norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight", "mlp.0.weight", "mlp.0.bias",
            "mlp.2.weight", "mlp.2.bias", "adaLN_modulation.weight", "adaLN_modulation.bias")}
    assert keys == expected


def test_forward_matches_reference_and_one_hot():
    model = random_transformer(0)
    x = torch.randint(0, 5, (3, 8), generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.0, 0.5, 2.0])
    with torch.no_grad():
        logits = model(x, sigma)
        ref = reference_dit(model.state_dict(), x, sigma, n_heads=2)
        onehot = model(F.one_hot(x, 5).float(), sigma)
    assert logits.shape == (3, 8, 5)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(onehot, logits, atol=1e-5, rtol=1e-5)


def test_load_matches_original_and_uses_ema(tmp_path):
    raw, ema = random_transformer(0), random_transformer(1)
    path = tmp_path / "last.ckpt"
    write_mdlm_ckpt(path, raw, ema_from=ema)
    x = torch.randint(0, 5, (4, 8), generator=torch.Generator().manual_seed(2))
    sigma = torch.zeros(4)

    with_ema = load_mdlm_checkpoint(str(path), ALPHABET, seq_len=8, num_steps=4)
    without = load_mdlm_checkpoint(str(path), ALPHABET, seq_len=8, num_steps=4, use_ema=False)
    assert isinstance(with_ema, MaskedDiffusion) and not with_ema.training and not with_ema.backbone.training
    assert with_ema.mask_id == 4 and with_ema.time_conditioning is False
    with torch.no_grad():
        torch.testing.assert_close(with_ema.backbone(x, sigma), ema(x, sigma))
        torch.testing.assert_close(without.backbone(x, sigma), raw(x, sigma))
        onehot = with_ema.backbone(F.one_hot(x, 5).float(), sigma)
        torch.testing.assert_close(onehot, ema(x, sigma), atol=1e-5, rtol=1e-5)

    # no EMA in the file: the raw weights are used
    write_mdlm_ckpt(path, raw)
    with torch.no_grad():
        torch.testing.assert_close(load_mdlm_checkpoint(str(path), ALPHABET, 8).backbone(x, sigma), raw(x, sigma))


def test_model_config_and_save_load_round_trip(tmp_path):
    raw = random_transformer(0)
    path = tmp_path / "weights.ckpt"
    write_mdlm_ckpt(path, raw, hparams={})  # weights only, as after converting a pickled MDLM file
    model = load_mdlm_checkpoint(str(path), ALPHABET, 8, num_steps=4,
                                 model_config={"n_heads": 2, "time_conditioning": True})
    assert model.time_conditioning is True
    with pytest.raises(ValueError, match="hidden_size=64"):
        load_mdlm_checkpoint(str(path), ALPHABET, 8, model_config={"n_heads": 2, "hidden_size": 64})

    saved = checkpoints.save(model, tmp_path / "export")
    again = checkpoints.load(saved)
    assert isinstance(again, MaskedDiffusion) and isinstance(again.backbone, MDLMTransformer)
    assert again.time_conditioning is True and again.num_steps == 4
    x = torch.randint(0, 5, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(again.denoise(x, 1), model.denoise(x, 1))
        torch.testing.assert_close(again.backbone(x, torch.ones(2)), raw(x, torch.ones(2)))


def test_error_paths(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_mdlm_checkpoint(str(missing), ALPHABET, 8)

    path = tmp_path / "last.ckpt"
    write_mdlm_ckpt(path, random_transformer(0))
    with pytest.raises(ValueError, match=r"vocab size 5 .* needs 4"):
        load_mdlm_checkpoint(str(path), "ACG", 8)

    pickled = tmp_path / "pickled.ckpt"
    write_mdlm_ckpt(pickled, random_transformer(0), hparams={"config": argparse.Namespace(n_heads=2)})
    with pytest.raises(ValueError, match="pickled") as err:
        load_mdlm_checkpoint(str(pickled), ALPHABET, 8)
    assert "\n" not in str(err.value) and "weights_only=False" in str(err.value)

    ckpt = tmp_path / "short_ema.ckpt"
    write_mdlm_ckpt(ckpt, random_transformer(0), ema_from=random_transformer(1))
    saved = torch.load(ckpt, weights_only=True)
    saved["ema"]["shadow_params"] = saved["ema"]["shadow_params"][:-1]
    torch.save(saved, ckpt)
    with pytest.raises(ValueError, match=r"ema holds \d+ shadow params, the network has \d+$"):
        load_mdlm_checkpoint(str(ckpt), ALPHABET, 8)
    saved["ema"]["shadow_params"] = [p.flatten() for p in saved["ema"]["shadow_params"]] + [torch.zeros(1)]
    torch.save(saved, ckpt)
    with pytest.raises(ValueError, match=r"ema shadow param 0 has shape"):
        load_mdlm_checkpoint(str(ckpt), ALPHABET, 8)
    assert load_mdlm_checkpoint(str(ckpt), ALPHABET, 8, use_ema=False) is not None


def test_svdd_smoke(tmp_path):
    path = tmp_path / "last.ckpt"
    write_mdlm_ckpt(path, random_transformer(0), ema_from=random_transformer(1))
    model = load_mdlm_checkpoint(str(path), ALPHABET, seq_len=8, num_steps=4)
    result = SVDD(PosteriorMeanValue(), num_candidates=2).sample(
        model, lambda seqs: [s.count("G") for s in seqs], [torch.Generator().manual_seed(i) for i in range(2)])
    assert len(result.samples) == 2
    assert all(len(s) == 8 and set(s) <= set(ALPHABET) for s in result.samples)
