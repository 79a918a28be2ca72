"""The image domain end to end on tiny models and a fake MNIST file: the digits DataModule, DDPM pretraining
with its EMA copy, the image networks and evaluation scores, and train.py / decode.py with the shipped image
configs (run in this process through the same entry points as the scripts, to spare the imports)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from svdd_lightning import PretrainedSampling, checkpoints
from svdd_lightning.domains.images.data import DigitsDataModule
from svdd_lightning.domains.images.diffusers_model import DiffusersDiffusion
from svdd_lightning.domains.images.networks import ImageValueCNN, MNISTClassifier
from svdd_lightning.domains.images.rewards import ClassifierConfidence, Compressibility, InkFraction
from svdd_lightning.domains.images.training import DenoisingPretraining, denoising_loss
from svdd_lightning.lightning.cli import main_decode, main_train
from svdd_lightning.lightning.training import ExportBest

from test_images_diffusers import tiny_model
from svdd_lightning.yaml_keys import read_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "images"
N_IMAGES, PER_CLASS = 200, 20
COMPRESS_METHODS = {"pretrained", "best_of_n", "dps", "smc", "svdd_pm", "svdd_mc"}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def tiny_unet(sample_size: int = 32) -> dict:
    return dict(sample_size=sample_size, in_channels=1, out_channels=1, block_out_channels=[8, 16],
                layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "UpBlock2D"], norm_num_groups=4)


def load_config(name: str) -> dict:
    return read_config(CONFIGS / name)


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_main(main, *args: str) -> None:
    """train.py / decode.py's entry point in this process; a one-line CLI error fails the test with its text.
    decode.py sets the float32 matmul precision for its process: it is restored for the other tests."""
    precision = torch.get_float32_matmul_precision()
    try:
        main(list(args))
    except SystemExit as err:  # _one_line_errors exits with the message
        pytest.fail(f"CLI exited: {err.code}")
    finally:
        torch.set_float32_matmul_precision(precision)


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> Path:
    """200 random 28 x 28 uint8 'digits' sorted by label (20 per class, as mnist_10k.npz is sorted); pixel
    (0, 0) of row r holds r, so every image of a split can be traced to its row."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N_IMAGES, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(N_IMAGES)
    labels = np.repeat(np.arange(10, dtype=np.uint8), PER_CLASS)
    path = tmp_path_factory.mktemp("mnist") / "digits.npz"
    np.savez(path, images=images, labels=labels)
    return path


def raw_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["images"], data["labels"]


def source_rows(images: torch.Tensor, low: float, high: float) -> list[int]:
    """The npz row of each padded image: its pixel (2, 2) (the file's (0, 0)) holds the row number."""
    return (((images[:, 0, 2, 2] - low) / (high - low)) * 255).round().long().tolist()


# --- 1. the digits DataModule -----------------------------------------------------------------------
def test_digits_split_is_a_disjoint_shuffled_cover_of_the_sorted_file(digits_npz):
    dm = DigitsDataModule(str(digits_npz), val_fraction=0.15, test_fraction=0.1, split_seed=3, batch_size=16)
    dm.setup("fit")
    raw, labels = raw_digits(digits_npz)
    rows = {split: source_rows(ds.tensors[0], -1.0, 1.0) for split, ds in dm.datasets.items()}
    assert {split: len(r) for split, r in rows.items()} == {"train": 150, "validation": 30, "test": 20}
    assert all(len(set(r)) == len(r) for r in rows.values())
    assert set(rows["train"]).isdisjoint(rows["validation"]) and set(rows["train"]).isdisjoint(rows["test"])
    assert set(rows["validation"]).isdisjoint(rows["test"])
    assert set(rows["train"]) | set(rows["validation"]) | set(rows["test"]) == set(range(N_IMAGES))
    for split, ds in dm.datasets.items():  # every image keeps its own label
        assert ds.tensors[1].dtype == torch.long
        assert ds.tensors[1].tolist() == labels[rows[split]].tolist(), split
    # the file is sorted by label: a slice would hold 1-2 classes, a shuffled split holds them all
    assert len(set(dm.datasets["train"].tensors[1].tolist())) == 10
    assert len(set(dm.datasets["validation"].tensors[1].tolist())) >= 5
    assert rows["train"] != sorted(rows["train"])
    # another seed, another split
    other = DigitsDataModule(str(digits_npz), val_fraction=0.15, test_fraction=0.1, split_seed=4)
    other.setup()
    assert source_rows(other.datasets["test"].tensors[0], -1.0, 1.0) != rows["test"]


@pytest.mark.parametrize("image_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_digits_are_zero_padded_to_32_and_mapped_to_the_image_range(digits_npz, image_range):
    low, high = image_range
    dm = DigitsDataModule(str(digits_npz), image_range=image_range)
    dm.setup()
    raw, _ = raw_digits(digits_npz)
    images = dm.datasets["train"].tensors[0]
    assert images.shape[1:] == (1, 32, 32) and images.dtype == torch.float32
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert bool((images[:, 0][:, border] == low).all())  # the zero padding, at the bottom of the range
    rows = source_rows(images, low, high)
    expected = torch.from_numpy(raw[rows]).float() / 255 * (high - low) + low
    assert torch.allclose(images[:, 0, 2:30, 2:30], expected, atol=1e-6)
    zero = torch.from_numpy(raw[rows] == 0)
    assert zero.any() and bool((images[:, 0, 2:30, 2:30][zero] == low).all())  # a zero pixel -> low
    assert float(images.min()) == low and float(images.max()) == pytest.approx(high)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 32, 32) and y.shape == (128,)


def test_compressibility_target_is_the_jpeg_reward_of_the_unit_range_images(digits_npz):
    dm = DigitsDataModule(str(digits_npz), image_range=(0.0, 1.0), target="compressibility")
    dm.setup()
    raw, _ = raw_digits(digits_npz)
    unit = F.pad(torch.from_numpy(raw).float().div(255).unsqueeze(1), (2, 2, 2, 2))
    expected = torch.tensor(Compressibility()(unit))
    for split, ds in dm.datasets.items():
        images, targets = ds.tensors
        assert targets.dtype == torch.float32 and bool((targets < 0).all()), split
        assert torch.allclose(targets, expected[source_rows(images, 0.0, 1.0)], atol=1e-5), split
    # a (-1, 1) range changes the batches, not the targets (computed on the [0, 1] images)
    wide = DigitsDataModule(str(digits_npz), target="compressibility")
    wide.setup()
    assert torch.allclose(wide.datasets["test"].tensors[1], dm.datasets["test"].tensors[1])


def test_bad_target_and_missing_file_are_one_line_errors_naming_data(digits_npz, tmp_path):
    with pytest.raises(ValueError, match=r"data\.target must be 'label' or 'compressibility', got 'digit'") as err:
        DigitsDataModule(str(digits_npz), target="digit")
    assert "\n" not in str(err.value)
    dm = DigitsDataModule(str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match=r"^data\.path: no file at .*missing\.npz") as err:
        dm.setup()
    assert "\n" not in str(err.value)
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"data\.path: .* needs arrays 'images' and 'labels'") as err:
        DigitsDataModule(str(bad)).setup()
    assert "\n" not in str(err.value)


# --- 2. DDPM pretraining ------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoising_loss_is_the_mse_of_the_unet_against_its_target_at_x_t(prediction_type):
    model = tiny_model("DDPMScheduler", prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 1, 8, 8, generator=gen) * 2 - 1, torch.randn(3, 1, 8, 8, generator=gen)
    t = torch.tensor([10, 50, 90])
    abar = model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    target = noise if prediction_type == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * x0
    with torch.no_grad():
        expected = ((model.unet(x_t, t).sample - target) ** 2).mean()
        loss = denoising_loss(model, x0, t, noise)
    assert loss.shape == () and float(loss) == pytest.approx(float(expected), rel=1e-5)
    with torch.no_grad():  # a different noise gives a different loss: the noise is the target
        assert float(denoising_loss(model, x0, t, -noise)) != pytest.approx(float(loss), rel=1e-3)


def test_ema_copy_moves_by_one_minus_decay_of_the_online_step_and_is_what_export_best_writes(tmp_path):
    module = DenoisingPretraining(tiny_model(), lr=1e-2, warmup_steps=1, ema_decay=0.9, val_timesteps=2)
    assert module.model is not module.online
    init = {k: v.detach().clone() for k, v in module.online.state_dict().items()}
    assert all(torch.equal(v, init[k]) for k, v in module.model.state_dict().items())
    assert not any(p.requires_grad for p in module.model.parameters())
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1, torch.zeros(8, dtype=torch.long))
    export = tmp_path / "export"
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        callbacks=[ExportBest(str(export), monitor="val/loss")], accelerator="cpu", **QUIET)
    trainer.fit(module, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    assert trainer.global_step == 1
    decay = min(0.9, (1 + 1) / (10 + 1))  # the warm-up decay after the first optimiser step
    online, ema = module.online.state_dict(), module.model.state_dict()
    name = "unet.conv_in.weight"
    step = online[name] - init[name]
    assert step.abs().max() > 1e-4  # the optimiser moved the online weights
    assert torch.allclose(ema[name] - init[name], (1 - decay) * step, atol=1e-7)
    for key, value in module.online.named_parameters():  # and so does every other parameter
        assert torch.allclose(ema[key] - init[key], (1 - decay) * (value.detach() - init[key]), atol=1e-7), key
    # the export is the EMA copy, not the online network
    exported = checkpoints.load(export)
    assert isinstance(exported, DiffusersDiffusion)
    assert torch.equal(exported.state_dict()[name], ema[name]) and not torch.equal(exported.state_dict()[name],
                                                                                     online[name])
    meta = checkpoints.metadata(export)
    assert meta["global_step"] == 1 and "val/loss" in meta
    assert meta["parameters"] == sum(p.numel() for p in module.model.parameters())


def test_validation_loss_is_deterministic_and_uses_the_ema_copy():
    module = DenoisingPretraining(tiny_model(), val_timesteps=3)
    with torch.no_grad():
        module.online.unet.conv_in.weight.add_(1.0)  # only the online network changes
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    logged = {}
    module.log = lambda name, value, **kwargs: logged.setdefault(name, []).append(float(value))
    with torch.no_grad():
        module.validation_step((images, torch.zeros(4, dtype=torch.long)), 0)
        module.validation_step((images, torch.zeros(4, dtype=torch.long)), 0)
        reference = DenoisingPretraining(tiny_model(), val_timesteps=3)
        reference.log = lambda name, value, **kwargs: logged.setdefault("ref", []).append(float(value))
        reference.validation_step((images, torch.zeros(4, dtype=torch.long)), 0)
    first, second = logged["val/loss"]
    assert first == second == pytest.approx(logged["ref"][0])  # fixed noise; the changed online net is not used


# --- 3. train.py fit with the shipped image configs -------------------------------------------------
def test_train_fit_pretrain_mnist_exports_an_ema_ddpm_that_samples_digits(digits_npz, tmp_path):
    config = load_config("pretrain_mnist.yaml")
    export = tmp_path / "ddpm"
    config["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=1, check_val_every_n_epoch=1,
                             accelerator="cpu", default_root_dir=str(tmp_path / "runs"), logger=False, **QUIET)
    config["trainer"]["callbacks"][0]["init_args"]["directory"] = str(export)
    init = config["model"]["init_args"]
    init.update(warmup_steps=1, val_timesteps=2)
    init["model"]["init_args"].update(num_steps=3, unet=tiny_unet())
    config["data"]["init_args"].update(path=str(digits_npz), batch_size=16)
    run_main(main_train, "fit", "--config", str(write_config(config, tmp_path / "pretrain.yaml")))
    model = checkpoints.load(export)
    assert isinstance(model, DiffusersDiffusion) and model.num_steps == 3
    assert type(model.scheduler).__name__ == "DDIMScheduler"
    assert model.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    meta = checkpoints.metadata(export)
    assert meta["global_step"] == 2 and meta["epoch"] == 0 and np.isfinite(meta["val/loss"])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    with torch.inference_mode():
        result = PretrainedSampling().sample(model, InkFraction(), gens)
    assert [tuple(s.shape) for s in result.samples] == [(1, 32, 32)] * 3
    assert all(0 <= float(s.min()) and float(s.max()) <= 1 for s in result.samples)
    assert result.stats.denoiser_calls == 3 * 3


def test_train_fit_classifier_mnist_exports_the_network_with_its_accuracy(digits_npz, tmp_path):
    config = load_config("classifier_mnist.yaml")
    export = tmp_path / "classifier"
    config["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=2, accelerator="cpu",
                             default_root_dir=str(tmp_path / "runs"), logger=False, **QUIET)
    config["trainer"]["callbacks"][0]["init_args"]["directory"] = str(export)
    config["model"]["init_args"]["network"]["init_args"]["channels"] = [4, 8]
    config["data"]["init_args"].update(path=str(digits_npz), batch_size=16)
    assert config["data"]["init_args"]["image_range"] == [0.0, 1.0]
    run_main(main_train, "fit", "--config", str(write_config(config, tmp_path / "classifier.yaml")))
    network = checkpoints.load(export)
    assert isinstance(network, MNISTClassifier) and not network.training
    assert network(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    meta = checkpoints.metadata(export)
    assert 0.0 <= meta["val/accuracy"] <= 1.0 and meta["global_step"] == 2
    # the accuracy is that of the exported network on the 20 validation images (no dropout in eval)
    dm = DigitsDataModule(str(digits_npz), image_range=(0.0, 1.0))
    dm.setup()
    images, labels = dm.datasets["validation"].tensors
    assert len(labels) == 20
    with torch.no_grad():
        accuracy = float((network(images).argmax(dim=1) == labels).float().mean())
    assert meta["val/accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_train_fit_with_a_missing_data_file_exits_with_one_line(tmp_path):
    config = load_config("classifier_mnist.yaml")
    config["trainer"].update(max_epochs=1, accelerator="cpu", default_root_dir=str(tmp_path / "runs"), logger=False,
                             **QUIET)
    config["trainer"]["callbacks"][0]["init_args"]["directory"] = str(tmp_path / "export")
    config["data"]["init_args"]["path"] = str(tmp_path / "nowhere.npz")
    with pytest.raises(SystemExit) as err:
        main_train(["fit", "--config", str(write_config(config, tmp_path / "bad.yaml"))])
    message = str(err.value.code)
    assert message.startswith("error: data.path: no file at") and "\n" not in message
    assert not (tmp_path / "export").exists()


# --- 4. the value network / reward proxy ----------------------------------------------------------------
def test_image_value_cnn_shapes_inputs_time_and_batch_independence(tmp_path):
    torch.manual_seed(0)
    net = ImageValueCNN(channels=(4, 8), time_dim=8).eval()
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(5, 1, 32, 32, generator=gen), torch.rand(5, generator=gen)
    with torch.no_grad():
        out = net(x, t)
        assert out.shape == (5,) and out.dtype == torch.float32
        assert torch.equal(net({"sample": x, "class_label": torch.zeros(5)}, t), out)
        assert torch.equal(net(x), net(x, torch.zeros(5)))
        assert not torch.allclose(net(x), out)  # the time embedding matters
        # row i's output depends on row i only
        alone = torch.stack([net(x[i:i + 1], t[i:i + 1])[0] for i in range(5)])
        assert torch.allclose(alone, out, atol=1e-5)
        other = x.clone()
        other[1:] = torch.randn(4, 1, 32, 32, generator=gen) * 3
        assert torch.allclose(net(other, t)[0], out[0], atol=1e-5)
        latents = ImageValueCNN(in_channels=4, channels=(4, 8), time_dim=8, state_key="latents").eval()
        z = torch.randn(2, 4, 8, 8, generator=gen)
        assert torch.equal(latents({"latents": z, "sample": torch.zeros(2, 1, 8, 8)}), latents(z))
    checkpoints.save(latents, tmp_path / "latents")
    again = checkpoints.load(tmp_path / "latents")
    assert isinstance(again, ImageValueCNN) and again.state_key == "latents"
    checkpoints.save(net, tmp_path / "value")
    loaded = checkpoints.load(tmp_path / "value")
    with torch.no_grad():
        assert torch.equal(loaded({"sample": x}, t), out)
        assert torch.equal(again(z), latents(z))


# --- 5. evaluation scores ----------------------------------------------------------------------------
def test_classifier_confidence_is_the_networks_top_softmax_probability(tmp_path):
    torch.manual_seed(0)
    network = MNISTClassifier(channels=(4, 8)).eval()
    with torch.no_grad():
        network.head[1].weight.mul_(20)  # spread the logits so the probabilities are not all near 0.1
    checkpoints.save(network, tmp_path / "classifier")
    score = ClassifierConfidence(str(tmp_path / "classifier"), batch_size=3)
    images = torch.rand(7, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    images[0] = 0.0
    values = torch.tensor(score(list(images)))
    with torch.no_grad():
        expected = torch.softmax(network(images), dim=-1).max(dim=-1).values
    assert score.name == "classifier_confidence" and values.shape == (7,)
    assert bool((values > 0).all() and (values <= 1).all()) and bool((values >= 0.1 - 1e-6).all())
    assert torch.allclose(values, expected, atol=1e-6)
    assert torch.allclose(torch.tensor(score(images)), values)
    assert values.std() > 1e-3


def test_ink_fraction_of_blank_white_and_noise_images():
    ink = InkFraction()
    gen = torch.Generator().manual_seed(0)
    images = [torch.zeros(1, 32, 32), torch.ones(1, 32, 32), torch.rand(1, 32, 32, generator=gen),
              torch.rand(3, 32, 32, generator=gen).mean(dim=0, keepdim=True).expand(3, -1, -1)]
    blank, white, noise, rgb = ink(images[:3]) + ink([images[3]])
    assert blank == 0.0 and white == 1.0
    assert noise == pytest.approx(0.5, abs=0.06) and rgb == pytest.approx(0.5, abs=0.1)
    half = torch.zeros(1, 32, 32)
    half[:, :16] = 0.9
    assert ink(torch.stack([half])) == [0.5]
    assert InkFraction(threshold=0.95)(torch.stack([half])) == [0.0]


# --- 6. decode.py predict with the shipped compare configs ---------------------------------------------
@pytest.fixture(scope="module")
def tiny_image_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny DDPM-trained-like DDIM model (3 steps, 32 x 32), a tiny classifier and tiny CNN value / proxy."""
    root = tmp_path_factory.mktemp("image_ckpt")
    torch.manual_seed(0)
    modules = {
        "ddpm": DiffusersDiffusion(tiny_unet(), {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
                                                 "beta_schedule": "squaredcos_cap_v2", "clip_sample": True,
                                                 "timestep_spacing": "trailing"}, num_steps=3),
        "classifier": MNISTClassifier(channels=(4, 8)),
        "value": ImageValueCNN(channels=(4, 8), time_dim=8),
        "proxy": ImageValueCNN(channels=(4, 8), time_dim=8),
    }
    return {key: checkpoints.save(module.eval(), root / key) for key, module in modules.items()}


def tiny_compare_config(name: str, paths: dict[str, Path], methods: set[str] | None = None) -> dict:
    """A shipped compare config with the tiny checkpoints, M = N = 2, 4 samples in batches of 2."""
    config = load_config(name)
    config["trainer"].update(QUIET)
    model = config["model"]
    model["model"] = str(paths["ddpm"])
    reward = model["reward"]["init_args"]
    if "proxy" in reward:
        reward["proxy"] = str(paths["proxy"])
        reward["reward"]["init_args"]["processes"] = 1
    else:
        reward["checkpoint"] = str(paths["classifier"])
    if methods is not None:
        model["methods"] = {k: v for k, v in model["methods"].items() if k in methods}
    for key, method in model["methods"].items():
        args = method.get("init_args", {})
        if "n" in args:
            args["n"] = 2
        if "num_candidates" in args:
            args["num_candidates"] = 2
        value = args.get("value", {}).get("init_args", {})
        if "network" in value:
            value["network"] = str(paths["value"])
    for metric in model["metrics"].values():
        fn = metric["init_args"]["fn"].setdefault("init_args", {})
        if "checkpoint" in fn:
            fn["checkpoint"] = str(paths["classifier"])
    config["data"] = {"num_samples": 4, "batch_size": 2}
    return config


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_decode_compare_compress_writes_images_summary_and_resumes(tiny_image_checkpoints, tmp_path):
    config = write_config(tiny_compare_config("compare_compress.yaml", tiny_image_checkpoints), tmp_path / "c.yaml")
    out = tmp_path / "out"
    args = ("predict", "--config", str(config), "--output_dir", str(out))
    run_main(main_decode, *args)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == COMPRESS_METHODS
    for method, entry in summary.items():
        assert entry["n"] == 4, method
        assert sorted(p.name for p in (out / method).iterdir()) == [f"{i:05d}.png" for i in range(4)]
        for i in range(4):
            with Image.open(out / method / f"{i:05d}.png") as image:
                assert image.size == (32, 32) and image.mode == "L"
        assert (out / f"{method}_grid.png").stat().st_size > 0
        for metric in ("classifier_confidence", "ink_fraction", "log_p_class_3"):
            assert set(entry[metric]) >= {"mean", "median", "top20", "top10"}, (method, metric)
        assert 0 < entry["classifier_confidence"]["mean"] <= 1 and 0 <= entry["ink_fraction"]["mean"] <= 1
        assert "fraction_above_0.9" in entry["classifier_confidence"]
        assert entry["reward"]["mean"] < 0  # minus kB
    steps = 3
    per_sample = {m: e["per_sample"] for m, e in summary.items()}
    assert per_sample["pretrained"]["denoiser_calls"] == steps
    assert per_sample["best_of_n"]["denoiser_calls"] == 2 * steps
    assert per_sample["svdd_pm"]["denoiser_calls"] == 2 * (steps - 1) + 1
    # SVDD-MC scores its candidates with the value network, not the denoiser: only the kept one is denoised
    assert per_sample["svdd_mc"]["denoiser_calls"] == steps
    assert per_sample["svdd_mc"]["value_calls"] == 2 * (steps - 1)
    assert per_sample["smc"]["denoiser_calls"] == steps and per_sample["smc"]["value_calls"] == steps
    assert per_sample["dps"]["gradient_calls"] == steps and per_sample["dps"]["denoiser_calls"] == steps
    assert per_sample["svdd_pm"]["value_calls"] == 0
    rows = read_csv(out / "samples.csv")
    assert len(rows) == 6 * 4
    columns = {"method", "index", "image", "reward", "classifier_confidence", "ink_fraction", "log_p_class_3"}
    assert set(rows[0]) == columns
    assert all(r["image"] == f"{r['method']}/{int(r['index']):05d}.png" for r in rows)
    assert all((out / r["image"]).is_file() for r in rows)
    # the CSV's reward is the compressibility of the written PNG (lossless, 8-bit)
    first = rows[0]
    png = torch.from_numpy(np.array(Image.open(out / first["image"]))).float().div(255)[None]
    assert float(first["reward"]) == pytest.approx(Compressibility()([png])[0], abs=1e-6)
    assert (out / "reward_histogram.png").is_file()

    # the same command again: nothing is left to decode, no new rows, the outputs stay as they were
    before = {(r["method"], r["index"]): r for r in rows}
    pngs = {m: (out / m / "00000.png").read_bytes() for m in COMPRESS_METHODS}
    run_main(main_decode, *args)
    after = {(r["method"], r["index"]): r for r in read_csv(out / "samples.csv")}
    assert len(read_csv(out / "samples.csv")) == 6 * 4 and after.keys() == before.keys()
    for key, row in before.items():  # the same image, reward and scores
        assert after[key]["image"] == row["image"], key
        for column in ("reward", "classifier_confidence", "ink_fraction", "log_p_class_3"):
            assert float(after[key][column]) == pytest.approx(float(row[column]), rel=1e-6, abs=1e-7), key
    assert all((out / m / "00000.png").read_bytes() == pngs[m] for m in COMPRESS_METHODS)
    again = json.loads((out / "summary.json").read_text())
    assert {m: e["n"] for m, e in again.items()} == {m: 4 for m in COMPRESS_METHODS}
    assert again["best_of_n"]["reward"] == summary["best_of_n"]["reward"]


def test_rerunning_a_finished_smc_run_leaves_its_rows_unchanged(tiny_image_checkpoints, tmp_path):
    config = tiny_compare_config("compare_compress.yaml", tiny_image_checkpoints, methods={"smc"})
    config["model"]["methods"]["smc"]["init_args"].update(alpha=0.001, ess_threshold=1.0, resampling="multinomial")
    config["data"] = {"num_samples": 2, "batch_size": 2}  # one population of two particles
    out = tmp_path / "out"
    args = ("predict", "--config", str(write_config(config, tmp_path / "smc.yaml")), "--output_dir", str(out))
    run_main(main_decode, *args)
    before, png = read_csv(out / "samples.csv"), (out / "smc" / "00000.png").read_bytes()
    run_main(main_decode, *args)
    assert len(read_csv(out / "samples.csv")) == 2  # no new rows: this holds
    assert (out / "smc" / "00000.png").read_bytes() == png  # fails: sample 0 is another image
    assert read_csv(out / "samples.csv") == before


def test_decode_compare_classifier_with_a_subset_of_methods(tiny_image_checkpoints, tmp_path):
    config = tiny_compare_config("compare_classifier.yaml", tiny_image_checkpoints,
                                 methods={"pretrained", "best_of_n", "dps", "svdd_mc"})
    out = tmp_path / "out"
    run_main(main_decode, "predict", "--config", str(write_config(config, tmp_path / "c.yaml")), "--output_dir",
             str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pretrained", "best_of_n", "dps", "svdd_mc"}
    for method, entry in summary.items():
        assert entry["n"] == 4 and -10.0 <= entry["reward"]["mean"] < 0, method  # log p(3 | image), floored at -10
        assert entry["compressibility"]["mean"] < 0 and 0 < entry["classifier_confidence"]["median"] <= 1
        assert len(list((out / method).glob("*.png"))) == 4 and (out / f"{method}_grid.png").is_file()
    assert summary["dps"]["per_sample"]["gradient_calls"] == 3
    assert summary["best_of_n"]["per_sample"]["denoiser_calls"] == 6
    # every row's reward is log p(3 | its image) under the classifier (up to the PNG's 8-bit rounding)
    network = checkpoints.load(tiny_image_checkpoints["classifier"])
    for row in read_csv(out / "samples.csv"):
        png = torch.from_numpy(np.array(Image.open(out / row["image"]))).float().div(255)[None, None]
        with torch.no_grad():
            log_p = float(torch.log_softmax(network(png), dim=-1)[0, 3])
        assert float(row["reward"]) == pytest.approx(max(log_p, -10.0), abs=1e-3), (row["method"], float(row["reward"]) - log_p)
