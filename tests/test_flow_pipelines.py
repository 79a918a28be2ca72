"""Stable Diffusion 3 from a local folder of tiny random components: the conditioning, guided velocity and
sigma grid reproduce diffusers' own StableDiffusion3Pipeline; preference and aesthetic rewards score its images."""
from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from svdd_lightning.domains.images.flow_pipelines import Flux, StableDiffusion3, flow_sigmas, pack_latents
from tiny_images import IMAGE_SIZE, build_tiny_flux, build_tiny_sd3

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
