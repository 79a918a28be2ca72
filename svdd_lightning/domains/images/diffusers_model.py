"""diffusers models as :class:`DiffusionModel` s: pixel UNets (:class:`DiffusersDiffusion`) and Stable
Diffusion (:class:`StableDiffusion`), sampled with a stateless scheduler.

Levels: after ``scheduler.set_timesteps(num_steps)``, level k < num_steps is the scheduler's timestep
``timesteps[k]`` (level 0 the noisiest, drawn from the prior), level num_steps the sample the last step
returns. ``time(k) = (timesteps[k] + 1) / num_train_timesteps`` (1 = noise), 0 at the clean level.

Schedulers: SVDD steps the M candidates of every row as one batch, so the scheduler must keep no state
between ``step`` calls. DDIM (eta > 0) and DDPM qualify; multistep or stateful schedulers (DPM-Solver,
UniPC, PNDM, Euler, Heun, LMS, KDPM2, DEIS, LCM, TCD) are refused.

Randomness: candidate j of row b draws its noise from ``generators[b]`` (its j-th draw of the step), on
the CPU, so a sample depends on its own generator only, not on the batch it is decoded in.

States are dicts of batched tensors: the noisy tensor (``"sample"`` or ``"latents"``) and the sample's
condition (``"class_label"``; ``"prompt_embeds"`` and ``"prompt_id"``), so that repeating or indexing
rows keeps every candidate with its own condition.

Conditions: the model holds a list of conditions (class labels, prompts), ``num_conditions`` of them;
the decoders give sample i condition ``i % num_conditions`` (``n`` samples per prompt:
``num_samples = n * len(prompts)``), and SMC resamples within each condition's population.

Decoded samples are images: float32 CPU tensors (C, H, W) in [0, 1], one per row; the rewards of
:mod:`.rewards` take a list of them (or a (B, C, H, W) tensor).
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from ...checkpoints import Configurable
from ...core.model import DiffusionModel
from ...core.state import repeat_rows
from ...extras import require

ImageState = dict[str, torch.Tensor]
STATELESS_SCHEDULERS = {"DDIMScheduler": DDIMScheduler, "DDPMScheduler": DDPMScheduler}


def build_scheduler(config: dict[str, Any], eta: float) -> DDIMScheduler | DDPMScheduler:
    """A DDIM or DDPM scheduler from its config (``_class_name`` names the class); others are refused."""
    name = config.get("_class_name")
    if name not in STATELESS_SCHEDULERS:
        raise ValueError(f"scheduler {name or '(config without _class_name)'} is not supported: SVDD steps M "
                         f"candidates per sample in one batch and needs a stateless scheduler: DDIMScheduler "
                         f"(eta > 0) or DDPMScheduler")
    if name == "DDIMScheduler" and eta <= 0:
        raise ValueError(f"DDIMScheduler needs eta > 0 (got {eta}): with eta = 0 the M candidates of a step are "
                         f"identical")
    return STATELESS_SCHEDULERS[name].from_config(config)


def row_noise(shape: Sequence[int], generators: Sequence[torch.Generator], m: int, device: torch.device) -> torch.Tensor:
    """Standard normal rows, len(generators) * m of them, drawn on the CPU: rows b*m .. b*m+m-1 in turn from
    generators[b]."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators for _ in range(m)]).to(device)


def tag_prompts(images: list[torch.Tensor], prompts: Sequence[str] | None, ids: torch.Tensor | None) -> list[torch.Tensor]:
    """The images, each given its prompt as ``image.prompt`` (preference rewards read it) when there are prompts."""
    if prompts and ids is not None:
        for image, i in zip(images, ids.tolist()):
            image.prompt = prompts[i]
    return images


def _subfolder(path: str | Path, name: str) -> str | None:
    """``name`` when ``path`` has that subfolder (pipeline layout), else None (a lone model's folder)."""
    return name if (Path(path) / name).is_dir() else None


class DiffusersChain(DiffusionModel):
    """The chain of a diffusers denoiser and a stateless scheduler; subclasses supply the network.

    Subclasses set ``state_key`` (the noisy tensor of the state), ``sample_shape`` (its shape per row),
    and implement ``_predict`` (the network output at a timestep), ``_images`` (clean tensors to images
    in [0, 1], differentiably) and ``_condition_state`` (the state entries of condition ids).
    """

    state_key: str
    sample_shape: tuple[int, ...]

    def __init__(self, scheduler: dict[str, Any], num_steps: int, eta: float, num_conditions: int) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.scheduler = build_scheduler(dict(scheduler), eta)
        self.scheduler.set_timesteps(num_steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]
        self.num_steps, self.eta, self.num_conditions = num_steps, float(eta), num_conditions

    # --- subclass hooks ----------------------------------------------------------------------------
    @abstractmethod
    def _predict(self, x: ImageState, timestep: int) -> torch.Tensor:
        """The network's output (float32) for the states ``x`` at a scheduler timestep."""

    @abstractmethod
    def _images(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean tensors -> images (B, C, H, W) in [0, 1], differentiable."""

    @abstractmethod
    def _condition_state(self, ids: torch.Tensor) -> ImageState:
        """The state entries of each row's condition id."""

    # --- the chain ---------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def time(self, level: int) -> float:
        if level >= self.num_steps:
            return 0.0
        return (self.timesteps[level] + 1) / self.scheduler.config.num_train_timesteps

    def _noise(self, generators: Sequence[torch.Generator], m: int) -> torch.Tensor:
        """Standard normal rows, len(generators) * m of them: rows b*m .. b*m+m-1 drawn in turn from generators[b]."""
        return row_noise(self.sample_shape, generators, m, self._device())

    def initial_state(self, generators: Sequence[torch.Generator], conditions: torch.Tensor | None = None) -> ImageState:
        """Prior noise per generator; row b under condition ``conditions[b]`` (an index into the prompts or
        class labels; the decoders pass ``sample index % num_conditions``)."""
        if conditions is None:
            if self.num_conditions > 1:
                raise ValueError(f"{type(self).__name__} has {self.num_conditions} prompts/labels: give each row's "
                                 f"condition (decoders do: sample i gets condition i % {self.num_conditions})")
            conditions = torch.zeros(len(generators), dtype=torch.long)
        ids = torch.as_tensor(conditions, dtype=torch.long).to(self._device())
        noise = self._noise(generators, 1) * self.scheduler.init_noise_sigma
        return {self.state_key: noise, **self._condition_state(ids)}

    def denoise(self, x: ImageState, level: int) -> torch.Tensor:
        return self._predict(x, self.timesteps[level])

    def _step(self, prediction: torch.Tensor, level: int, sample: torch.Tensor,
              generators: Sequence[torch.Generator] | None = None, m: int = 1) -> SchedulerOutput:
        """The scheduler's step from ``level``; row b*m + j's noise comes from ``generators[b]``.

        Without generators only ``pred_original_sample`` is meant: DDIM steps with eta = 0, DDPM (whose
        step always draws noise) gets a throwaway generator.
        """
        t = self.timesteps[level]
        if isinstance(self.scheduler, DDIMScheduler):
            if generators is None:
                return self.scheduler.step(prediction, t, sample, eta=0.0)
            return self.scheduler.step(prediction, t, sample, eta=self.eta, variance_noise=self._noise(generators, m))
        rows = [torch.Generator()] if generators is None else [g for g in generators for _ in range(m)]
        return self.scheduler.step(prediction, t, sample, generator=rows)  # one generator per row, in row order

    def propose(self, x: ImageState, prediction: torch.Tensor, level: int, generators: Sequence[torch.Generator],
                num_candidates: int) -> ImageState:
        """One scheduler step for all B*M candidates at once; conditions are repeated with their rows."""
        state = repeat_rows(x, num_candidates)
        out = self._step(prediction.repeat_interleave(num_candidates, dim=0), level, state[self.state_key],
                         generators, num_candidates)
        return {**state, self.state_key: out.prev_sample}

    def x0_hat(self, x: ImageState, prediction: torch.Tensor, level: int) -> ImageState:
        """The scheduler's ``pred_original_sample`` (with its clipping or thresholding)."""
        return {**x, self.state_key: self._step(prediction, level, x[self.state_key]).pred_original_sample}

    def decode(self, x0: ImageState) -> list[torch.Tensor]:
        """Images as float32 CPU tensors (C, H, W) in [0, 1] (moved to the host in the decoder's precision);
        a prompt-conditioned model's images carry their prompt as ``image.prompt`` (preference rewards read it)."""
        with torch.no_grad():
            images = list(self.images(x0).cpu().float())
        return tag_prompts(images, getattr(self, "prompts", None), x0.get("prompt_id"))

    def images(self, x0: ImageState) -> torch.Tensor:
        """Clean states -> an image batch (B, C, H, W) in [0, 1] on the model's device, in the decoder's
        dtype (differentiable); image rewards read it directly (``score_states``), without the host."""
        return self._images(x0[self.state_key])

    def sample_files(self):
        """A decoding run writes this model's samples as PNGs and a grid per method."""
        from .outputs import ImageFiles

        return ImageFiles()

    def x0_samples(self, x: ImageState, prediction: torch.Tensor, level: int, generators: Sequence[torch.Generator],
                   num_samples: int, num_steps: int) -> ImageState:
        """x_0 drawn by ``num_steps`` ancestral steps (DDPM's posterior, i.e. DDIM with eta = 1) on an even
        subgrid of the remaining timesteps; each step's x_0 is the scheduler's ``pred_original_sample`` at its
        own timestep (clipping included), the last step returns it (so one step is the deterministic x0_hat)."""
        key, n, num_steps = self.state_key, num_samples, min(num_steps, self.num_steps - level)
        state, out = repeat_rows(x, n), prediction.repeat_interleave(n, dim=0)
        rows = [g for g in generators for _ in range(n)]
        levels = torch.linspace(level, self.num_steps, num_steps + 1).round().long().tolist()
        abar = self.scheduler.alphas_cumprod.to(out.device)
        for j in range(num_steps):
            if j:
                out = self._predict(state, self.timesteps[levels[j]])
            x0 = self._step(out, levels[j], state[key]).pred_original_sample
            if j + 1 == num_steps:
                break
            a_t, a_next = abar[self.timesteps[levels[j]]], abar[self.timesteps[levels[j + 1]]]
            ratio = a_t / a_next  # the forward step's signal factor, squared
            var = (1 - a_next) / (1 - a_t) * (1 - ratio)
            mean = a_next.sqrt() * x0 + ratio.sqrt() * (1 - a_next) / (1 - a_t) * (state[key] - a_t.sqrt() * x0)
            state = {**state, key: mean + var.sqrt() * self._noise(rows, 1)}
        return {**state, key: x0}

    def forward_noise(self, x0: ImageState, level: int, generators: Sequence[torch.Generator]) -> ImageState:
        """``scheduler.add_noise`` at the level's timestep (the clean level is returned as it is)."""
        if level >= self.num_steps:
            return x0
        t = torch.full((len(generators),), self.timesteps[level], dtype=torch.long)
        return {**x0, self.state_key: self.scheduler.add_noise(x0[self.state_key], self._noise(generators, 1), t)}

    def guided_prediction(self, x: ImageState, level: int, guidance: Callable[[torch.Tensor], torch.Tensor],
                          scale: float) -> torch.Tensor:
        """DPS in classifier-guidance form: eps' = eps - scale * sqrt(1 - abar_t) * grad, grad the gradient
        with respect to x_t of ``guidance(images of x0_hat(x_t))`` (through the network), images in [0, 1].

        For v- or x0-predicting models the same change of eps is made to their output.
        """
        key, t = self.state_key, self.timesteps[level]
        sample = x[key].detach().requires_grad_(True)
        prediction = self._predict({**x, key: sample}, t)
        x0 = self._step(prediction, level, sample).pred_original_sample
        (grad,) = torch.autograd.grad(guidance(self._images(x0)).sum(), sample)
        abar = self.scheduler.alphas_cumprod[t].to(sample.device)
        return self._tilt(prediction.detach(), -scale * (1 - abar).sqrt() * grad, abar)

    def _tilt(self, prediction: torch.Tensor, delta_eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """The network output whose implied noise is eps + delta_eps (a learned variance is kept)."""
        kind = self.scheduler.config.prediction_type
        factor = {"epsilon": torch.ones_like(abar), "v_prediction": abar.rsqrt(),
                  "sample": -((1 - abar) / abar).sqrt()}[kind]
        c = delta_eps.shape[1]
        return torch.cat([prediction[:, :c] + factor * delta_eps, prediction[:, c:]], dim=1)


class DiffusersDiffusion(Configurable, DiffusersChain):
    """A diffusers ``UNet2DModel`` (unconditional or class-conditional) and a DDIM or DDPM scheduler.

    Args:
        unet: the ``UNet2DModel`` config.
        scheduler: the scheduler config; ``_class_name`` is ``DDIMScheduler`` or ``DDPMScheduler``.
        num_steps: sampling steps (the levels of the chain).
        eta: DDIM's noise scale (> 0; 1 = DDPM-like); DDPM ignores it.
        class_labels: for a class-conditional UNet, the labels to sample: sample i gets
            ``class_labels[i % len]`` (``[3]``: every sample is a 3).
        image_range: the pixel range the UNet was trained on, mapped to [0, 1] by ``decode``.

    State: ``{"sample": (B, C, H, W)}``, plus ``"class_label"`` (B,) for a conditional UNet.
    """

    state_key = "sample"

    def __init__(self, unet: dict[str, Any], scheduler: dict[str, Any], num_steps: int = 50, eta: float = 1.0,
                 class_labels: Sequence[int] | None = None, image_range: Sequence[float] = (-1.0, 1.0)) -> None:
        super().__init__(scheduler, num_steps, eta, len(class_labels) if class_labels else 1)
        self.unet = UNet2DModel.from_config(unet)
        config = self.unet.config
        conditional = config.num_class_embeds is not None or config.class_embed_type is not None
        if conditional != bool(class_labels):
            raise ValueError("DiffusersDiffusion.class_labels: give the labels to sample for a class-conditional UNet, "
                             "and none for an unconditional one")
        self.class_labels = [int(c) for c in class_labels or []]
        size = config.sample_size
        self.sample_shape = (config.in_channels, *((size, size) if isinstance(size, int) else size))
        low, high = image_range
        self.image_range = (float(low), float(high))

    @classmethod
    def from_pretrained(cls, path: str | Path, scheduler_class: str | None = None,
                        **kwargs: Any) -> "DiffusersDiffusion":
        """Load a local diffusers folder: ``unet/`` and ``scheduler/`` (a pipeline) or the UNet and
        ``scheduler_config.json`` side by side; nothing is downloaded. ``scheduler_class`` replaces the
        folder's scheduler (e.g. ``"DDIMScheduler"`` for a DDPM pipeline); ``kwargs`` go to the constructor."""
        unet = UNet2DModel.from_pretrained(path, subfolder=_subfolder(path, "unet"), local_files_only=True)
        scheduler = DDPMScheduler.load_config(path, subfolder=_subfolder(path, "scheduler"), local_files_only=True)
        scheduler = {k: v for k, v in scheduler.items() if k == "_class_name" or not k.startswith("_")}
        if scheduler_class is not None:
            scheduler["_class_name"] = scheduler_class
        unet_config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        model = cls(unet_config, scheduler, **kwargs)
        model.unet.load_state_dict(unet.state_dict())
        return model.eval()

    def _condition_state(self, ids: torch.Tensor) -> ImageState:
        if not self.class_labels:
            return {}
        return {"class_label": torch.tensor(self.class_labels, device=ids.device)[ids]}

    def _predict(self, x: ImageState, timestep: int) -> torch.Tensor:
        sample = x["sample"].to(self.unet.dtype)
        return self.unet(sample, timestep, class_labels=x.get("class_label")).sample.float()

    def _images(self, x0: torch.Tensor) -> torch.Tensor:
        low, high = self.image_range
        return ((x0 - low) / (high - low)).clamp(0, 1)


def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP text embeddings (P, L, D) of prompts padded to the tokenizer's length, as diffusers' SD pipeline."""
    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    mask = tokens.attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        return text_encoder(tokens.input_ids, attention_mask=mask).last_hidden_state.float()


class StableDiffusion(DiffusersChain):
    """Stable Diffusion from a local diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``), sampled in latent space with DDIM and classifier-free guidance.

    Args:
        path: the local pipeline folder; nothing is downloaded. Its scheduler config is read as DDIM's.
        prompts: sample i is conditioned on ``prompts[i % len(prompts)]``.
        num_steps: DDIM steps.
        eta: DDIM's noise scale (> 0).
        guidance_scale: classifier-free guidance, eps = eps_u + scale * (eps_c - eps_u).

    State: ``{"latents": (B, 4, h, w), "prompt_embeds": (B, L, D), "prompt_id": (B,)}``: each row carries its
    own prompt's embedding, so candidates keep their prompt through repeats and selections; the empty
    prompt's embedding (the unconditional half of guidance) is computed once and broadcast. The prompts
    are encoded once at construction and the text encoder is not kept. The model is frozen (no gradients
    to its weights; DPS differentiates with respect to the latents only).
    """

    state_key = "latents"

    def __init__(self, path: str, prompts: Sequence[str], num_steps: int = 50, eta: float = 1.0,
                 guidance_scale: float = 7.5) -> None:
        require("transformers", extra="images", feature="StableDiffusion")
        from transformers import CLIPTextModel, CLIPTokenizer

        if not prompts:
            raise ValueError("StableDiffusion.prompts: give at least one prompt")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"StableDiffusion.path: no folder at {path} (a local Stable Diffusion pipeline in "
                                    f"diffusers layout; nothing is downloaded)")
        scheduler = DDIMScheduler.load_config(path, subfolder="scheduler", local_files_only=True)
        super().__init__({**scheduler, "_class_name": "DDIMScheduler"}, num_steps, eta, len(prompts))
        self.unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
        embeds = encode_prompts(tokenizer, text_encoder, [*prompts, ""])
        self.register_buffer("prompt_table", embeds[:-1], persistent=False)
        self.register_buffer("empty_prompt", embeds[-1:], persistent=False)
        self.prompts, self.guidance_scale = list(prompts), float(guidance_scale)
        size = self.unet.config.sample_size
        self.sample_shape = (self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        self.eval().requires_grad_(False)

    def _condition_state(self, ids: torch.Tensor) -> ImageState:
        return {"prompt_embeds": self.prompt_table[ids], "prompt_id": ids}

    def _predict(self, x: ImageState, timestep: int) -> torch.Tensor:
        """Guided noise: the UNet on [uncond; cond], the empty prompt then each row's own prompt."""
        latents, embeds = x["latents"], x["prompt_embeds"]
        inputs = torch.cat([latents, latents]).to(self.unet.dtype)
        context = torch.cat([self.empty_prompt.expand(len(latents), -1, -1), embeds]).to(self.unet.dtype)
        uncond, cond = self.unet(inputs, timestep, encoder_hidden_states=context).sample.float().chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)

    def _images(self, x0: torch.Tensor) -> torch.Tensor:
        """VAE decoding of latents (divided by the VAE's scaling factor) to images in [0, 1]."""
        images = self.vae.decode(x0.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()
        return (images / 2 + 0.5).clamp(0, 1)
