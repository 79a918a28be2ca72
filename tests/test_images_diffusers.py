"""diffusers UNets and Stable Diffusion as DiffusionModels, on tiny random components (nothing downloaded)."""
from __future__ import annotations


import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from svdd_lightning import DPS, SMC, SVDD, BestOfN, PosteriorMeanValue, PretrainedSampling, checkpoints
from svdd_lightning.core.reward import GuardedReward
from svdd_lightning.domains.images.diffusers_model import DiffusersDiffusion, StableDiffusion
from svdd_lightning.domains.images.networks import MNISTClassifier
from svdd_lightning.domains.images.rewards import ClassifierLogProb
from svdd_lightning.core.reward import guard
from svdd_lightning.core.run import Run
from tiny_images import build_tiny_sd

SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")


def unet_config(num_class_embeds: int | None = None) -> dict:
    return dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=4, num_class_embeds=num_class_embeds)


def tiny_model(scheduler: str = "DDIMScheduler", class_labels: list[int] | None = None, num_steps: int = 4,
               **scheduler_args) -> DiffusersDiffusion:
    torch.manual_seed(0)
    return DiffusersDiffusion(unet_config(10 if class_labels else None),
                              {"_class_name": scheduler, "num_train_timesteps": 100, **scheduler_args},
                              num_steps=num_steps, class_labels=class_labels).eval()


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def brightness(images) -> list[float]:
    return [float(image.mean()) for image in images]


# --- pixel UNets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_sample_does_not_depend_on_the_batch_it_is_decoded_in(scheduler, inference_mode):
    model = tiny_model(scheduler, class_labels=[3])
    for decoder in (PretrainedSampling(), SVDD(PosteriorMeanValue(), num_candidates=3)):
        alone = decoder.sample(model, brightness, generators(7)).x0["sample"]
        batched = decoder.sample(model, brightness, generators(7, 8, 9)).x0["sample"]
        assert torch.allclose(alone[0], batched[0], atol=1e-5)
        assert not torch.allclose(batched[0], batched[1], atol=1e-3)


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "PNDMScheduler",
                                       "EulerDiscreteScheduler", "LCMScheduler", None])
def test_stateful_schedulers_are_refused_in_one_line(scheduler):
    config = {} if scheduler is None else {"_class_name": scheduler}
    with pytest.raises(ValueError, match=r"DDIMScheduler \(eta > 0\) or DDPMScheduler") as err:
        DiffusersDiffusion(unet_config(), config)
    assert "\n" not in str(err.value)


def test_deterministic_ddim_is_refused():
    with pytest.raises(ValueError, match="eta > 0"):
        DiffusersDiffusion(unet_config(), {"_class_name": "DDIMScheduler"}, eta=0.0)


def pretrained_chain(model: DiffusersDiffusion, seeds: list[int]) -> dict:
    """Samples ``indices = range(len(seeds))`` by running the chain by hand, one generator per sample."""
    x = model.initial_state(generators(*seeds), torch.arange(len(seeds)) % model.num_conditions)
    for level in range(model.num_steps):
        x = model.propose(x, model.denoise(x, level), level, generators(*seeds), 1)
    return x


def test_checkpoint_round_trip_gives_identical_samples(tmp_path, inference_mode):
    model = tiny_model(class_labels=[3, 5])
    checkpoints.save(model, tmp_path / "model")
    loaded = checkpoints.load(tmp_path / "model")
    assert isinstance(loaded, DiffusersDiffusion) and loaded.class_labels == [3, 5]
    original, again = pretrained_chain(model, [1, 2]), pretrained_chain(loaded, [1, 2])
    assert torch.equal(original["sample"], again["sample"]) and again["class_label"].tolist() == [3, 5]
    coarse = checkpoints.load(tmp_path / "model", overrides={"num_steps": 2})
    assert coarse.num_steps == 2 and len(coarse.timesteps) == 2


@pytest.mark.parametrize("layout", ["pipeline", "model"])
def test_from_pretrained_reads_a_local_diffusers_folder(tmp_path, layout):
    torch.manual_seed(1)
    unet = UNet2DModel(**unet_config())
    unet_dir, scheduler_dir = (tmp_path / "unet", tmp_path / "scheduler") if layout == "pipeline" else (tmp_path,) * 2
    unet.save_pretrained(unet_dir)
    DDPMScheduler(num_train_timesteps=100).save_pretrained(scheduler_dir)
    model = DiffusersDiffusion.from_pretrained(tmp_path, num_steps=5)
    assert type(model.scheduler).__name__ == "DDPMScheduler" and model.num_steps == 5
    as_ddim = DiffusersDiffusion.from_pretrained(tmp_path, scheduler_class="DDIMScheduler", num_steps=5)
    assert type(as_ddim.scheduler).__name__ == "DDIMScheduler"
    x = model.initial_state(generators(0))
    with torch.no_grad():
        assert torch.equal(model.denoise(x, 1), unet(x["sample"], model.timesteps[1]).sample)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_hat_is_the_schedulers_pred_original_sample_without_a_network_call(scheduler, prediction_type,
                                                                              inference_mode):
    model = tiny_model(scheduler, prediction_type=prediction_type)
    reference = type(model.scheduler).from_config(model.scheduler.config)
    reference.set_timesteps(model.num_steps)
    calls = []
    model.unet.register_forward_hook(lambda *args: calls.append(1))
    x = model.initial_state(generators(0, 1))
    for level in (0, 2):
        prediction = model.denoise(x, level)
        calls.clear()
        x0 = model.x0_hat(x, prediction, level)
        assert not calls
        expected = reference.step(prediction, int(reference.timesteps[level]), x["sample"],
                                  generator=torch.Generator()).pred_original_sample
        assert torch.allclose(x0["sample"], expected)


def test_candidates_keep_their_label_and_draw_noise_from_their_own_generator(inference_mode):
    model, m = tiny_model(class_labels=[3, 7]), 3
    x = model.initial_state(generators(0, 1), torch.tensor([0, 1]))
    out = model.propose(x, model.denoise(x, 1), 1, generators(10, 11), m)
    assert out["class_label"].tolist() == [3] * m + [7] * m
    assert not torch.allclose(out["sample"][0], out["sample"][1])
    row = {k: v[1:] for k, v in x.items()}
    again = model.propose(row, model.denoise(row, 1), 1, generators(11), m)
    assert torch.allclose(again["sample"], out["sample"][m:], atol=1e-6)


def test_several_labels_need_conditions_and_best_of_n_children_share_their_samples_label(inference_mode):
    model = tiny_model(class_labels=[3, 7], num_steps=2)
    with pytest.raises(ValueError, match="give each row's condition"):
        model.initial_state(generators(0, 1))
    assert model.initial_state(generators(0, 1, 2), torch.tensor([0, 1, 0]))["class_label"].tolist() == [3, 7, 3]
    run = Run(model, guard(brightness), indices=[4, 5])
    assert run.initial_state(generators(*range(6)))["class_label"].tolist() == [3, 3, 3, 7, 7, 7]
    result = BestOfN(n=3).sample(model, brightness, generators(0, 1), indices=[4, 5])
    assert result.x0["class_label"].tolist() == [3, 7]


def test_pretrained_best_of_n_and_svdd_pm_run_through_the_adapter(inference_mode):
    model, steps = tiny_model(class_labels=[1, 2], num_steps=3), 3
    decoders = {"pretrained": (PretrainedSampling(), steps), "best_of_2": (BestOfN(n=2), 2 * steps),
                "svdd_pm": (SVDD(PosteriorMeanValue(), num_candidates=3), 3 * (steps - 1) + 1)}
    for name, (decoder, calls_per_sample) in decoders.items():
        result = decoder.sample(model, brightness, generators(0, 1, 2))
        assert result.x0["class_label"].tolist() == [1, 2, 1], name
        assert len(result.samples) == 3 and result.samples[0].shape == (1, 8, 8)
        assert all(0 <= float(s.min()) and float(s.max()) <= 1 for s in result.samples)
        assert torch.allclose(result.rewards, torch.tensor(brightness(result.samples)))
        assert result.stats.per_sample(3)["denoiser_calls"] == calls_per_sample, name


@pytest.mark.parametrize("potential", SMC.POTENTIALS)
def test_smc_resamples_within_each_labels_population(potential, inference_mode):
    model = tiny_model(class_labels=[1, 2], num_steps=3)
    result = SMC(PosteriorMeanValue(), alpha=0.01, potential=potential).sample(model, brightness, generators(*range(6)))
    assert result.x0["class_label"].tolist() == [1, 2] * 3
    firsts = result.x0["sample"][0::2].flatten(1)
    assert len({tuple(r.tolist()) for r in firsts}) < 3  # resampled: copies within label 1's population


def test_forward_noise_is_the_schedulers_add_noise_and_time_decreases():
    model = tiny_model()
    x0 = {"sample": torch.rand(2, 1, 8, 8) * 2 - 1}
    noisy = model.forward_noise(x0, 1, generators(0, 1))
    abar = model.scheduler.alphas_cumprod[model.timesteps[1]]
    noise = torch.stack([torch.randn(1, 8, 8, generator=g) for g in generators(0, 1)])
    assert torch.allclose(noisy["sample"], abar.sqrt() * x0["sample"] + (1 - abar).sqrt() * noise, atol=1e-6)
    assert model.forward_noise(x0, model.num_steps, generators(0, 1)) is x0
    times = [model.time(k) for k in range(model.num_steps + 1)]
    assert times == sorted(times, reverse=True) and 0 < times[0] <= 1 and times[-1] == 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_dps_moves_the_implied_noise_by_the_scaled_guidance_gradient(prediction_type):
    model, level, scale = tiny_model(prediction_type=prediction_type, clip_sample=False), 1, 2.0
    x = model.initial_state(generators(0, 1))

    def guidance(images: torch.Tensor) -> torch.Tensor:
        return (images * torch.linspace(0, 1, 8)).mean(dim=(1, 2, 3))

    guided = model.guided_prediction(x, level, guidance, scale)
    sample = x["sample"].clone().requires_grad_(True)
    prediction = model.denoise({"sample": sample}, level)
    x0 = model.x0_hat({"sample": sample}, prediction, level)["sample"]
    (grad,) = torch.autograd.grad(guidance(model._images(x0)).sum(), sample)
    abar = model.scheduler.alphas_cumprod[model.timesteps[level]]
    # eps' = eps - scale sqrt(1 - abar) grad, so x0' = x0 + scale (1 - abar) / sqrt(abar) grad
    tilted = model.x0_hat(x, guided, level)["sample"]
    assert grad.abs().sum() > 0
    assert torch.allclose(tilted, x0.detach() + scale * (1 - abar) / abar.sqrt() * grad, atol=1e-5)


def test_dps_with_a_classifier_reward_runs_in_inference_mode(tmp_path):
    torch.manual_seed(0)
    checkpoints.save(MNISTClassifier(channels=(4, 8)), tmp_path / "classifier")
    reward = GuardedReward(ClassifierLogProb(str(tmp_path / "classifier"), target_class=3))
    model = tiny_model(class_labels=[3], num_steps=3).requires_grad_(False)
    with torch.inference_mode():  # as in Lightning's predict loop
        result = DPS(scale=5.0).sample(model, reward, generators(0, 1))
    assert result.stats.gradient_calls == 2 * 3 and bool((result.rewards < 0).all())


# --- Stable Diffusion --------------------------------------------------------------------------------
PROMPTS = ["a cat", "a red dog", "sky"]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def sd(sd_folder) -> StableDiffusion:
    return StableDiffusion(str(sd_folder), PROMPTS, num_steps=3)


def test_stable_diffusion_loads_as_ddim_with_distinct_prompt_embeddings(sd):
    assert type(sd.scheduler).__name__ == "DDIMScheduler" and sd.scheduler.config.steps_offset == 1
    assert sd.prompt_table.shape == (3, 12, 8) and sd.empty_prompt.shape == (1, 12, 8)
    assert not torch.allclose(sd.prompt_table[0], sd.prompt_table[1])


@pytest.mark.parametrize("m", [2, 3])
def test_every_candidate_keeps_its_prompt_in_both_halves_of_guidance(sd, m, inference_mode):
    x = sd.initial_state(generators(0, 1, 2), torch.tensor([0, 1, 2]))
    candidates = sd.propose(x, sd.denoise(x, 0), 0, generators(0, 1, 2), m)
    for b in range(3):
        for j in range(m):
            assert int(candidates["prompt_id"][b * m + j]) == b
            assert torch.equal(candidates["prompt_embeds"][b * m + j], sd.prompt_table[b])
    seen = []
    hook = sd.unet.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["encoder_hidden_states"]),
                                             with_kwargs=True)
    try:
        sd.denoise(candidates, 1)
    finally:
        hook.remove()
    (context,) = seen
    uncond, cond = context.chunk(2)
    assert uncond.shape[0] == 3 * m and torch.equal(uncond, sd.empty_prompt.expand(3 * m, -1, -1))
    assert torch.equal(cond, sd.prompt_table.repeat_interleave(m, dim=0))


@pytest.mark.parametrize("m", [2, 3])
def test_svdd_pm_on_stable_diffusion(sd, m, inference_mode):
    result = SVDD(PosteriorMeanValue(), num_candidates=m).sample(sd, brightness, generators(0, 1, 2))
    assert result.x0["prompt_id"].tolist() == [0, 1, 2]
    assert torch.equal(result.x0["prompt_embeds"], sd.prompt_table)
    assert [tuple(s.shape) for s in result.samples] == [(3, 16, 16)] * 3
    assert result.stats.per_sample(3)["denoiser_calls"] == m * (sd.num_steps - 1) + 1
    assert torch.allclose(result.rewards, torch.tensor(brightness(result.samples)))
