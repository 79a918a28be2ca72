"""Stable Diffusion through ``decode.py``: configs/images/sd_aesthetic.yaml end to end on a tiny random SD
pipeline folder and a tiny CLIP + aesthetic predictor (nothing downloaded)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from svdd_lightning.domains.images.diffusers_model import StableDiffusion
from svdd_lightning.domains.images.outputs import from_pil
from svdd_lightning.lightning.cli import main_decode
from svdd_lightning.lightning.decoding import sample_seed
from tiny_images import IMAGE_SIZE, build_tiny_sd, random_aesthetic_predictor
from svdd_lightning.yaml_keys import read_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "images" / "sd_aesthetic.yaml"
METHODS = {"pretrained", "best_of_n", "smc", "svdd_pm"}
PROMPTS = ["cat", "dog"]
NUM_STEPS, NUM_SAMPLES, BATCH = 2, 4, 2
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def build_tiny_aesthetic(root: Path, projection_dim: int = 12) -> tuple[Path, Path]:
    """A tiny CLIP vision-with-projection folder and a random predictor state dict with the published keys."""
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        projection_dim=projection_dim, hidden_size=8, intermediate_size=16, num_attention_heads=2,
        num_hidden_layers=1, image_size=30, patch_size=10)).save_pretrained(root / "clip")
    torch.save(random_aesthetic_predictor(projection_dim), root / "predictor.pth")
    return root / "clip", root / "predictor.pth"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    sd = build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))
    clip, predictor = build_tiny_aesthetic(tmp_path_factory.mktemp("tiny_aesthetic"))
    return {"sd": sd, "clip": clip, "predictor": predictor}


def tiny_config(files: dict[str, Path]) -> dict:
    """The shipped config on the tiny files: 2 steps, M = N = 2, 2 prompts x 2 samples, batches of 2, CPU."""
    config = read_config(CONFIG)
    config["trainer"].update(accelerator="cpu", precision="32-true", **QUIET)
    model = config["model"]
    model["model"]["init_args"].update(path=str(files["sd"]), prompts=PROMPTS, num_steps=NUM_STEPS)
    model["reward"]["init_args"].update(clip_path=str(files["clip"]), predictor_path=str(files["predictor"]))
    for method in model["methods"].values():
        args = method.setdefault("init_args", {})
        for key in ("n", "num_candidates"):
            if key in args:
                args[key] = 2
    config["data"] = {"num_samples": NUM_SAMPLES, "batch_size": BATCH}
    return config


def decode(config: dict, path: Path, out: Path):
    """decode.py in this process; restores the float32 matmul precision it sets."""
    path.write_text(yaml.safe_dump(config))
    precision = torch.get_float32_matmul_precision()
    try:
        return main_decode(["predict", "--config", str(path), "--output_dir", str(out)])
    finally:
        torch.set_float32_matmul_precision(precision)


@pytest.fixture(scope="module")
def decoded(tiny_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_decode")
    try:
        cli = decode(tiny_config(tiny_files), root / "sd.yaml", root / "out")
    except SystemExit as err:  # a one-line CLI error
        pytest.fail(f"CLI exited: {err.code}")
    return cli, root / "out"


def png(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return from_pil(image)


def test_shipped_config_names_the_users_sd_folder_and_the_papers_settings():
    config = read_config(CONFIG)
    model = config["model"]["model"]
    assert model["class_path"] == "svdd_lightning.domains.images.diffusers_model.StableDiffusion"
    assert model["init_args"]["path"] == "models/stable-diffusion-v1-5" and len(model["init_args"]["prompts"]) == 4
    assert config["data"]["num_samples"] % len(model["init_args"]["prompts"]) == 0
    methods = config["model"]["methods"]
    assert set(methods) == METHODS and set(config["model"]["metrics"]) == {"compressibility"}
    assert methods["svdd_pm"]["init_args"]["num_candidates"] == methods["best_of_n"]["init_args"]["n"] == 20
    assert "python decode.py predict --config configs/images/sd_aesthetic.yaml" in CONFIG.read_text()


def test_jsonargparse_instantiates_stable_diffusion_from_its_class_path(decoded, tiny_files):
    cli, _ = decoded
    model = cli.model.model
    assert type(model) is StableDiffusion and model.prompts == PROMPTS and model.num_steps == NUM_STEPS
    assert model.eta == 1.0 and model.guidance_scale == 7.5 and type(model.scheduler).__name__ == "DDIMScheduler"


def test_every_method_writes_four_rgb_pngs_of_the_vae_size_with_finite_rewards(decoded):
    _, out = decoded
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == METHODS
    for method, entry in summary.items():
        assert entry["n"] == NUM_SAMPLES and entry["reward_failures"] == 0, method
        assert sorted(p.name for p in (out / method).iterdir()) == [f"{i:05d}.png" for i in range(NUM_SAMPLES)]
        for i in range(NUM_SAMPLES):
            with Image.open(out / method / f"{i:05d}.png") as image:
                assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB", (method, i)
        assert (out / f"{method}_grid.png").stat().st_size > 0
        assert math.isfinite(entry["reward"]["mean"]) and entry["compressibility"]["mean"] < 0, method
    with open(out / "samples.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(METHODS) * NUM_SAMPLES
    assert all(math.isfinite(float(r["reward"])) and math.isfinite(float(r["compressibility"])) for r in rows)
    per_sample = {m: e["per_sample"]["denoiser_calls"] for m, e in summary.items()}
    assert per_sample == {"pretrained": NUM_STEPS, "best_of_n": 2 * NUM_STEPS, "smc": NUM_STEPS,
                          "svdd_pm": 2 * (NUM_STEPS - 1) + 1}


def test_sample_i_is_decoded_under_prompt_i_mod_2(decoded, tiny_files):
    """Each batch re-decoded with the core API on a freshly loaded model, its sample indices given: every
    PNG is reproduced and each row carries prompt i % 2; under the other prompt the same noise gives
    another image, so the PNGs do pin the prompt."""
    cli, out = decoded
    model = StableDiffusion(str(tiny_files["sd"]), PROMPTS, num_steps=NUM_STEPS)
    reward, seed = cli.model.reward, cli.model.seed
    for method, decoder in cli.model.methods.items():
        for batch in ([0, 1], [2, 3]):
            generators = lambda: [torch.Generator().manual_seed(sample_seed(seed, method, i)) for i in batch]
            written = torch.stack([png(out / method / f"{i:05d}.png") for i in batch])
            with torch.inference_mode():
                result = decoder.sample(model, reward, generators(), indices=batch)
                swapped = decoder.sample(model, reward, generators(), indices=[i + 1 for i in batch])
            assert result.x0["prompt_id"].tolist() == [i % 2 for i in batch], method
            assert torch.equal(result.x0["prompt_embeds"], model.prompt_table[[i % 2 for i in batch]])
            again = torch.stack(result.samples)
            assert (again - written).abs().max() <= 0.5 / 255 + 1e-6, (method, batch)  # the PNG's 8-bit rounding
            assert (torch.stack(swapped.samples) - written).abs().amax(dim=(1, 2, 3)).min() > 4 / 255, (method, batch)


def missing_folder_error(files: dict[str, Path], tmp_path: Path) -> str:
    config = tiny_config(files)
    config["model"]["model"]["init_args"]["path"] = str(tmp_path / "no-such-sd")
    with pytest.raises(SystemExit) as err:
        decode(config, tmp_path / "bad.yaml", tmp_path / "out")
    return str(err.value.code)


def test_a_missing_sd_folder_ends_the_command_with_one_line(tiny_files, tmp_path):
    message = missing_folder_error(tiny_files, tmp_path)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    assert not (tmp_path / "out" / "summary.json").exists()


def test_the_missing_sd_folder_error_names_the_field_and_the_folder(tiny_files, tmp_path):
    message = missing_folder_error(tiny_files, tmp_path)
    assert "StableDiffusion.path" in message and "no-such-sd" in message
