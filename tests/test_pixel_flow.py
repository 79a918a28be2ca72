"""The MNIST rectified flow end to end on tiny models: flow-matching training with its EMA copy and export
through train.py, the loaded checkpoint's noise level, and decode.py with the shipped flow compare config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from svdd_lightning import SVDD, PosteriorMeanValue, PretrainedSampling, checkpoints
from svdd_lightning.diffusion.flow import interpolate
from svdd_lightning.domains.images.pixel_flow import PixelFlow
from svdd_lightning.domains.images.rewards import InkFraction
from svdd_lightning.domains.images.training import flow_matching_loss
from svdd_lightning.lightning.cli import main_decode, main_train

from test_images_pipeline import (QUIET, digits_npz, load_config, run_main, tiny_compare_config,  # noqa: F401
                                  tiny_image_checkpoints, tiny_unet, write_config)


@torch.no_grad()
def test_flow_matching_loss_is_the_mse_of_the_velocity_against_noise_minus_x0():
    torch.manual_seed(0)
    model = PixelFlow(tiny_unet(), num_steps=4)
    x0, noise, t = torch.rand(3, 1, 32, 32) * 2 - 1, torch.randn(3, 1, 32, 32), torch.tensor([0.1, 0.5, 0.9])
    expected = ((model.network(interpolate(x0, noise, t.view(-1, 1, 1, 1)), t) - (noise - x0)) ** 2).mean()
    assert flow_matching_loss(model, x0, t, noise) == pytest.approx(float(expected), rel=1e-6)
    # the velocity network sees timestep 1000 t
    unet_out = model.network.unet(interpolate(x0, noise, t.view(-1, 1, 1, 1)), t * 1000).sample
    assert torch.allclose(model.network(interpolate(x0, noise, t.view(-1, 1, 1, 1)), t), unet_out)


def test_train_fit_pretrain_mnist_flow_exports_an_ema_flow_that_samples_digits(digits_npz, tmp_path):
    config = load_config("pretrain_mnist_flow.yaml")
    export = tmp_path / "flow"
    config["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=1, check_val_every_n_epoch=1,
                             accelerator="cpu", default_root_dir=str(tmp_path / "runs"), logger=False, **QUIET)
    config["trainer"]["callbacks"][0]["init_args"]["directory"] = str(export)
    init = config["model"]["init_args"]
    init.update(warmup_steps=1, val_times=2)
    init["model"]["init_args"].update(num_steps=3, unet=tiny_unet())
    config["data"]["init_args"].update(path=str(digits_npz), batch_size=16)
    run_main(main_train, "fit", "--config", str(write_config(config, tmp_path / "pretrain.yaml")))
    model = checkpoints.load(export)
    assert isinstance(model, PixelFlow) and model.num_steps == 3 and model.noise_level == 0.7
    meta = checkpoints.metadata(export)
    assert meta["global_step"] == 2 and meta["val/loss"] > 0
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    with torch.inference_mode():
        result = PretrainedSampling().sample(model, InkFraction(), gens)
    assert [tuple(s.shape) for s in result.samples] == [(1, 32, 32)] * 3
    assert all(0 <= float(s.min()) and float(s.max()) <= 1 for s in result.samples)
    assert result.stats.denoiser_calls == 3 * 3
    # the ODE: the same checkpoint at noise level 0 samples deterministically, and SVDD with M > 1 refuses it
    ode = checkpoints.load(export, overrides={"noise_level": 0})
    assert ode.noise_level == 0 and not ode.stochastic_proposals
    with torch.inference_mode():
        first = PretrainedSampling().sample(ode, InkFraction(), [torch.Generator().manual_seed(0)]).samples[0]
        again = PretrainedSampling().sample(ode, InkFraction(), [torch.Generator().manual_seed(0)]).samples[0]
    assert torch.equal(first, again)
    with pytest.raises(ValueError, match="noise_level"):
        SVDD(PosteriorMeanValue(), num_candidates=2).sample(ode, InkFraction(), gens)


@pytest.fixture(scope="module")
def tiny_flow(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return checkpoints.save(PixelFlow(tiny_unet(), num_steps=3).eval(), tmp_path_factory.mktemp("flow") / "flow")


def test_decode_compare_compress_flow_runs_every_method(tiny_image_checkpoints, tiny_flow, tmp_path):
    config = tiny_compare_config("compare_compress_flow.yaml", {**tiny_image_checkpoints, "ddpm": tiny_flow})
    out = tmp_path / "out"
    run_main(main_decode, "predict", "--config", str(write_config(config, tmp_path / "c.yaml")), "--output_dir", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pretrained", "best_of_n", "dps", "smc", "svdd_pm"}
    per_sample = {m: e["per_sample"] for m, e in summary.items()}
    assert per_sample["pretrained"]["denoiser_calls"] == 3 and per_sample["best_of_n"]["denoiser_calls"] == 6
    assert per_sample["svdd_pm"]["denoiser_calls"] == 2 * (3 - 1) + 1
    assert all(e["n"] == 4 and e["reward"]["mean"] < 0 for e in summary.values())


def test_decode_compare_classifier_flow_runs(tiny_image_checkpoints, tiny_flow, tmp_path):
    config = tiny_compare_config("compare_classifier_flow.yaml", {**tiny_image_checkpoints, "ddpm": tiny_flow},
                                 methods={"pretrained", "dps", "svdd_pm"})
    out = tmp_path / "out"
    run_main(main_decode, "predict", "--config", str(write_config(config, tmp_path / "c.yaml")), "--output_dir", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pretrained", "dps", "svdd_pm"}
    assert summary["dps"]["per_sample"]["gradient_calls"] == 3 and all(e["reward"]["mean"] <= 0 for e in summary.values())


def test_decode_refuses_smc_on_the_flow_ode_before_any_work(tiny_image_checkpoints, tiny_flow, tmp_path):
    config = tiny_compare_config("compare_compress_flow.yaml", {**tiny_image_checkpoints, "ddpm": tiny_flow},
                                 methods={"smc"})
    config["model"]["model_args"] = {"noise_level": 0}
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main_decode(["predict", "--config", str(write_config(config, tmp_path / "c.yaml")), "--output_dir", str(out)])
    assert "noise_level" in str(exit_.value.code)
    assert not (out / "summary.json").exists()
