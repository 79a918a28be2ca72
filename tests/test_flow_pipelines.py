"""Stable Diffusion 3 and Flux from local folders of tiny random components: the conditioning, velocity and
sigma grid reproduce diffusers' own pipelines; the SDE step; SVDD-PM and SMC decode SD3 images scored by the
aesthetic and preference rewards."""
from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from svdd_lightning.domains.images.flow_pipelines import Flux, StableDiffusion3, flow_sigmas, pack_latents
from tiny_images import IMAGE_SIZE, build_tiny_flux, build_tiny_sd3
from svdd_lightning.yaml_keys import read_config

PROMPTS = ["a cat", "a red dog"]


def pipeline_latents(path, prompts, latents, steps, guidance, t5):
    """The latents diffusers' pipeline returns for the same folder, prompts and starting noise."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel.from_pretrained(path, subfolder="transformer"),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2"),
        tokenizer_2=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2"),
        text_encoder_3=T5EncoderModel.from_pretrained(path, subfolder="text_encoder_3") if t5 else None,
        tokenizer_3=AutoTokenizer.from_pretrained(path, subfolder="tokenizer_3") if t5 else None)
    with torch.no_grad():
        return pipe(prompt=prompts, latents=latents, num_inference_steps=steps, guidance_scale=guidance,
                    output_type="latent", max_sequence_length=6).images


@pytest.mark.parametrize("t5", [True, False])
def test_guided_euler_steps_on_the_sigma_grid_reproduce_diffusers_sd3(tmp_path, t5):
    path = build_tiny_sd3(tmp_path / "sd3", t5=t5)
    model = StableDiffusion3(str(path), PROMPTS, num_steps=3, guidance_scale=4.0, max_sequence_length=6)
    assert model.sigmas[0] == 1 and model.sigmas[-1] == 0 and len(model.sigmas) == 4
    torch.manual_seed(5)
    noise = torch.randn(2, *model.sample_shape)
    x = {"latents": noise, **model._condition_state(torch.tensor([0, 1]))}
    for level in range(3):  # the flow ODE by Euler, as FlowMatchEulerDiscreteScheduler.step
        v = model.velocity(x, level)
        x = {**x, "latents": x["latents"] + (model.sigmas[level + 1] - model.sigmas[level]) * v}
    expected = pipeline_latents(str(path), PROMPTS, noise, 3, 4.0, t5)
    assert torch.allclose(x["latents"], expected, atol=1e-5)
    images = model._images(x["latents"])
    assert images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and 0 <= images.min() and images.max() <= 1


def test_flux_velocity_on_packed_latents_reproduces_diffusers_flux(tmp_path):
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    path = build_tiny_flux(tmp_path / "flux")
    model = Flux(str(path), PROMPTS, num_steps=3, guidance_scale=3.5, max_sequence_length=6, height=IMAGE_SIZE)
    torch.manual_seed(5)
    noise = torch.randn(2, *model.sample_shape)
    x = {"latents": noise, **model._condition_state(torch.tensor([0, 1]))}
    for level in range(3):
        v = model.velocity(x, level)
        x = {**x, "latents": x["latents"] + (model.sigmas[level + 1] - model.sigmas[level]) * v}
    pipe = FluxPipeline(
        transformer=FluxTransformer2DModel.from_pretrained(path, subfolder="transformer"),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae"),
        text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
        text_encoder_2=T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2"),
        tokenizer_2=AutoTokenizer.from_pretrained(path, subfolder="tokenizer_2"))
    with torch.no_grad():
        expected = pipe(prompt=PROMPTS, latents=pack_latents(noise), num_inference_steps=3, guidance_scale=3.5,
                        height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="latent", max_sequence_length=6).images
    assert torch.allclose(pack_latents(x["latents"]), expected, atol=1e-5)
    assert model._images(x["latents"]).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    from svdd_lightning import SVDD, PosteriorMeanValue

    def brightness(images):
        return [float(image.mean()) for image in images]

    result = SVDD(PosteriorMeanValue(), num_candidates=2).sample(model, brightness, generators(0, 1))
    assert [image.prompt for image in result.samples] == PROMPTS
    assert result.rewards.tolist() == pytest.approx(brightness(result.samples))


def test_the_sigma_grid_is_the_schedulers_with_its_shift():
    plain = flow_sigmas({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0}, 4, 16)
    grid = torch.linspace(1, 1 / 1000, 4)  # the training sigmas' range, then the clean level 0
    assert torch.allclose(plain, torch.cat([grid, torch.zeros(1)]))
    shifted = flow_sigmas({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, 4, 16)
    def shift(s):  # SD3's shift of a sigma
        return 3 * s / (1 + 2 * s)

    uniform = torch.linspace(1, shift(torch.tensor(1 / 1000)), 4)  # between the shifted training sigmas' ends
    assert torch.allclose(shifted[:-1], shift(uniform), atol=1e-6) and shifted[-1] == 0
    dynamic = flow_sigmas({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, 4, 4096)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(4, mu=scheduler.config.max_shift)  # the largest image's shift (max_image_seq_len tokens)
    assert torch.allclose(dynamic, scheduler.sigmas)


def test_bad_sd3_settings_are_refused_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="StableDiffusion3.path"):
        StableDiffusion3(str(tmp_path / "missing"), PROMPTS)
    path = build_tiny_sd3(tmp_path / "sd3", t5=False)
    with pytest.raises(ValueError, match="StableDiffusion3.height/width"):
        StableDiffusion3(str(path), PROMPTS, height=18)
    with pytest.raises(ValueError, match="StableDiffusion3.prompts"):
        StableDiffusion3(str(path), [])


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    path = build_tiny_sd3(tmp_path_factory.mktemp("sd3"), t5=False)
    return StableDiffusion3(str(path), PROMPTS, num_steps=3, guidance_scale=4.0, max_sequence_length=6)


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_the_sde_step_keeps_the_ode_in_mean_and_spreads_candidates(sd3):
    x = sd3.initial_state(generators(0, 1), torch.tensor([0, 1]))
    v = sd3.denoise(x, 1)
    x1 = {**x, "latents": x["latents"] * 0.5}
    sd3.noise_level = 0.0
    try:
        ode = sd3.propose(x1, v, 1, generators(0, 1), 3)["latents"]
    finally:
        sd3.noise_level = 0.7
    assert torch.equal(ode[0], ode[2])  # the ODE: every candidate the same
    assert torch.allclose(ode[0], x1["latents"][0] - (sd3.sigmas[1] - sd3.sigmas[2]) * v[0])  # an Euler step
    sde = sd3.propose(x1, v, 1, generators(0, 1), 3)
    assert sde["prompt_id"].tolist() == [0, 0, 0, 1, 1, 1] and not torch.equal(sde["latents"][0], sde["latents"][1])
    t, t_next = sd3.sigmas[1], sd3.sigmas[2]
    std = 0.7 * (t / (1 - t)).sqrt()
    rows = x1["latents"].repeat_interleave(3, 0)
    drift = v.repeat_interleave(3, 0) + std ** 2 / (2 * t) * (rows + (1 - t) * v.repeat_interleave(3, 0))
    noise = (sde["latents"] - (rows - drift * (t - t_next))) / (std * (t - t_next).sqrt())
    assert abs(float(noise.mean())) < 0.2 and abs(float(noise.std()) - 1) < 0.2  # the step's noise is N(0, 1)
    last = sd3.propose(x1, v, sd3.num_steps - 1, generators(0, 1), 2)["latents"]
    assert torch.allclose(last[::2], sd3.x0_hat(x1, v, sd3.num_steps - 1)["latents"])  # the last step is x0_hat


@pytest.mark.parametrize("reward_name", ["aesthetic", "pickscore"])
def test_svdd_smc_and_dps_decode_sd3_images_scored_against_their_prompts(sd3, tmp_path, reward_name):
    from svdd_lightning import DPS, SMC, SVDD, PosteriorMeanValue, PosteriorSamplingValue
    from svdd_lightning.domains.images.preference import PickScore
    from svdd_lightning.domains.images.rewards import AestheticScore
    from test_preference_rewards import TEXT, VISION
    from test_sd_decode import build_tiny_aesthetic
    from transformers import CLIPConfig, CLIPModel

    from tiny_images import save_tiny_clip_tokenizer

    if reward_name == "aesthetic":
        clip, predictor = build_tiny_aesthetic(tmp_path)
        reward = AestheticScore(str(clip), str(predictor))
    else:
        torch.manual_seed(0)
        CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=6)).save_pretrained(tmp_path / "ps")
        reward = PickScore(str(tmp_path / "ps"), tokenizer_path=str(save_tiny_clip_tokenizer(tmp_path / "tok")))
    decoders = [SVDD(PosteriorMeanValue(), num_candidates=2), SMC(PosteriorMeanValue(), alpha=0.1),
                SVDD(PosteriorSamplingValue(num_samples=2, x0_steps=2), num_candidates=2)]
    if reward_name == "aesthetic":  # DPS's relaxed(images) has no prompts: a preference reward needs prompt=...
        decoders.append(DPS(scale=0.1))
    for decoder in decoders:
        result = decoder.sample(sd3, reward, generators(0, 1, 2, 3))
        assert result.x0["prompt_id"].tolist() == [0, 1, 0, 1]
        assert [image.prompt for image in result.samples] == PROMPTS * 2
        assert [tuple(s.shape) for s in result.samples] == [(3, IMAGE_SIZE, IMAGE_SIZE)] * 4
        assert torch.allclose(result.rewards, torch.tensor(reward(result.samples)), atol=1e-5)


def test_the_sd3_pickscore_config_decodes_end_to_end_on_tiny_files(tmp_path):
    import json
    from pathlib import Path

    from transformers import CLIPConfig, CLIPModel

    from test_preference_rewards import TEXT, VISION
    from test_sd_decode import QUIET, decode
    from tiny_images import save_tiny_clip_tokenizer

    config = read_config(Path(__file__).resolve().parents[1] / "configs/images/sd3_pickscore.yaml")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=6)).save_pretrained(tmp_path / "ps")
    config["trainer"].update(accelerator="cpu", **QUIET)
    model = config["model"]
    model["model"]["init_args"].update(path=str(build_tiny_sd3(tmp_path / "sd3", t5=False)), prompts=PROMPTS,
                                       num_steps=2, max_sequence_length=6)
    model["reward"]["init_args"].update(model_path=str(tmp_path / "ps"),
                                        tokenizer_path=str(save_tiny_clip_tokenizer(tmp_path / "tok")))
    for method in model["methods"].values():
        for key in ("n", "num_candidates"):
            if key in method["init_args"]:
                method["init_args"][key] = 2
    config["data"] = {"num_samples": 4, "batch_size": 2}
    decode(config, tmp_path / "sd3.yaml", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary) == {"pretrained", "best_of_n", "smc", "svdd_pm"}
    for method, entry in summary.items():
        assert entry["n"] == 4 and entry["reward_failures"] == 0, method
        assert len(list((tmp_path / "out" / method).glob("*.png"))) == 4


def test_forward_noise_follows_the_interpolant_and_dps_moves_x0_hat_up_the_reward(sd3):
    x = sd3.initial_state(generators(0, 1), torch.tensor([0, 1]))
    x0 = {**x, "latents": torch.randn_like(x["latents"])}
    noisy = sd3.forward_noise(x0, 1, generators(7, 8))
    t = sd3.sigmas[1]
    noise = torch.stack([torch.randn(sd3.sample_shape, generator=g) for g in generators(7, 8)])
    assert torch.allclose(noisy["latents"], (1 - t) * x0["latents"] + t * noise)
    assert sd3.forward_noise(x0, sd3.num_steps, generators(7, 8)) is x0

    def brightness(images):
        return images.mean(dim=(1, 2, 3))

    v = sd3.denoise(x, 1)
    assert torch.allclose(sd3.guided_prediction(x, 1, brightness, 0.0), v, atol=1e-6)
    guided = sd3.guided_prediction(x, 1, brightness, 0.05)
    with torch.no_grad():
        before = brightness(sd3._images(sd3.x0_hat(x, v, 1)["latents"]))
        after = brightness(sd3._images(sd3.x0_hat(x, guided, 1)["latents"]))
    assert (after > before).all()


def test_x0_samples_roll_out_sde_steps_and_one_step_is_x0_hat(sd3):
    x = sd3.initial_state(generators(0, 1), torch.tensor([0, 1]))
    v = sd3.denoise(x, 0)
    one = sd3.x0_samples(x, v, 0, generators(0, 1), 2, 1)
    assert torch.allclose(one["latents"][::2], sd3.x0_hat(x, v, 0)["latents"]) and one["prompt_id"].tolist() == [0, 0, 1, 1]
    two = sd3.x0_samples(x, v, 0, generators(0, 1), 2, 2)["latents"]
    assert not torch.allclose(two[0], two[1])  # stochastic rollouts
    again = sd3.x0_samples(x, v, 0, generators(0, 1), 2, 2)["latents"]
    assert torch.equal(two, again)  # from the rows' own generators
    sd3.noise_level = 0.0
    try:  # at a = 0: Euler from sigma_0 to sigma_2 (levels 0, 2, 3 of 3), then x0_hat
        ode = sd3.x0_samples(x, v, 0, generators(0, 1), 1, 2)["latents"]
        mid = {**x, "latents": x["latents"] - (sd3.sigmas[0] - sd3.sigmas[2]) * v}
        by_hand = sd3.x0_hat(mid, sd3.denoise(mid, 2), 2)["latents"]
    finally:
        sd3.noise_level = 0.7
    assert torch.allclose(ode, by_hand, atol=1e-6)


@pytest.mark.parametrize("decoder", ["svdd", "smc", "nested_is", "beam"])
def test_decoders_that_need_distinct_draws_refuse_the_ode_before_any_work(sd3, decoder):
    """At noise level 0 the M candidates (or resampled particles) of a state would all be the same image."""
    from svdd_lightning import SMC, SVDD, BeamSearch, NestedIS, PosteriorMeanValue, PretrainedSampling

    make = {"svdd": lambda: SVDD(PosteriorMeanValue(), 4), "smc": lambda: SMC(PosteriorMeanValue()),
            "nested_is": lambda: NestedIS(PosteriorMeanValue(), 2), "beam": lambda: BeamSearch(PosteriorMeanValue())}
    calls = []
    sd3.noise_level = 0.0
    try:
        with pytest.raises(ValueError, match="needs stochastic proposals.*set the model's noise_level > 0"):
            make[decoder]().sample(sd3, lambda images: calls.append(1) or [0.0] * len(images), generators(0, 1))
        assert not calls  # refused before any reward call
        assert not SVDD(PosteriorMeanValue(), 1).needs_stochastic_proposals  # M = 1 is the ODE sampler itself
        assert not PretrainedSampling().needs_stochastic_proposals
    finally:
        sd3.noise_level = 0.7
