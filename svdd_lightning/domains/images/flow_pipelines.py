"""Rectified-flow text-to-image models from local diffusers folders: Stable Diffusion 3 / 3.5 and Flux.

Time grid: ``FlowMatchEulerDiscreteScheduler``'s sigmas for ``num_steps`` steps (its ``shift``, or its
resolution-dependent shift when the config asks for ``use_dynamic_shifting``), read from the folder's
scheduler config; level k is sigma_k (level 0 = 1, pure noise; level num_steps = 0, the clean latents), the
network is called at timestep 1000 * sigma_k as the pipeline does.

Conditioning is as diffusers' ``StableDiffusion3Pipeline``: CLIP-L and CLIP-G penultimate hidden states side
by side, zero-padded to T5's width and followed by T5's tokens (zeros when the folder has no
``text_encoder_3``); pooled CLIP-L and CLIP-G embeddings as ``pooled_projections``. The prompts and the
empty prompt are encoded once at construction; the text encoders are not kept. Classifier-free guidance runs
the transformer on [uncond; cond], the empty prompt broadcast and each row's own prompt (its
``prompt_id``), as :class:`~.diffusers_model.StableDiffusion`.

States are dicts: ``"latents"`` (B, C, h, w), ``"prompt_embeds"``, ``"pooled"`` and ``"prompt_id"`` per row.

Sampling (:class:`FlowPipelineChain`): x_t = (1 - t) x_0 + t noise, x0_hat = x_t - t v. ``noise_level`` a = 0
steps the flow ODE by Euler (the pipelines' sampler); a > 0 steps the SDE with the ODE's marginals,
x_{t-d} = x_t - [v + s_t^2 / (2t) (x_t + (1 - t) v)] d + s_t sqrt(d) eps, s_t = a sqrt(t / (1 - t)) (Flow-GRPO;
at t = 1 the next sigma stands in for t under the root). The step to t = 0 is x0_hat in both cases. SVDD with
M > 1 candidates, SMC and the search decoders need a > 0 (with a = 0 every candidate is the same). ``x0_samples`` (the posterior-sampling value) rolls out
SDE steps on a subgrid; ``forward_noise`` (refinement) and ``guided_prediction`` (DPS through x0_hat) follow
the same interpolant. The math is :mod:`svdd_lightning.diffusion.flow`'s, shared with
:class:`~svdd_lightning.diffusion.RectifiedFlow`.
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ...core.model import DiffusionModel
from ...core.state import repeat_rows
from ...diffusion.flow import dps_velocity, even_subgrid, flow_step, interpolate, rollout, x0_from_velocity
from ...extras import require
from .diffusers_model import row_noise, tag_prompts

ImageState = dict[str, torch.Tensor]


def flow_sigmas(scheduler_config: dict[str, Any], num_steps: int, image_seq_len: int,
                uniform: bool = False) -> torch.Tensor:
    """The sigmas (num_steps + 1,) from 1 to 0 of ``FlowMatchEulerDiscreteScheduler`` for ``num_steps`` steps,
    with the config's shift (or, under ``use_dynamic_shifting``, the shift of ``image_seq_len`` latent tokens
    that diffusers' SD3 and Flux pipelines compute). ``uniform``: shift the grid 1, ..., 1 / num_steps (Flux's
    pipeline) instead of the scheduler's own."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    kwargs = {}
    if scheduler.config.get("use_dynamic_shifting"):
        c = scheduler.config
        kwargs["mu"] = calculate_shift(image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                       c.get("base_shift", 0.5), c.get("max_shift", 1.16))
    if uniform:
        kwargs["sigmas"] = torch.linspace(1.0, 1 / num_steps, num_steps).numpy()
    scheduler.set_timesteps(num_steps, **kwargs)
    return scheduler.sigmas.float()


def _clip_embeds(tokenizer: Any, encoder: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's CLIP conditioning: the penultimate hidden states (P, 77, D) and the projected pooled embedding."""
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    out = encoder(tokens.input_ids, output_hidden_states=True)
    return out.hidden_states[-2].float(), out.text_embeds.float()


def encode_sd3_prompts(path: str | Path, prompts: list[str], max_sequence_length: int,
                       joint_attention_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``StableDiffusion3Pipeline.encode_prompt``'s embeddings (P, 77 + T5 length, joint_attention_dim) and
    pooled embeddings (P, D_L + D_G) of prompts, from the folder's encoders (T5 optional)."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    def clip(index: str) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder=f"tokenizer{index}", local_files_only=True)
        encoder = CLIPTextModelWithProjection.from_pretrained(path, subfolder=f"text_encoder{index}",
                                                              local_files_only=True)
        return _clip_embeds(tokenizer, encoder, prompts)

    with torch.no_grad():
        (hidden_l, pooled_l), (hidden_g, pooled_g) = clip(""), clip("_2")
        if (Path(path) / "text_encoder_3").is_dir():
            tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer_3", local_files_only=True)
            tokens = tokenizer(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                               add_special_tokens=True, return_tensors="pt")
            encoder = T5EncoderModel.from_pretrained(path, subfolder="text_encoder_3", local_files_only=True)
            t5 = encoder(tokens.input_ids)[0].float()
        else:
            t5 = torch.zeros(len(prompts), max_sequence_length, joint_attention_dim)
    clip_hidden = torch.cat([hidden_l, hidden_g], dim=-1)
    clip_hidden = nn.functional.pad(clip_hidden, (0, t5.shape[-1] - clip_hidden.shape[-1]))
    return torch.cat([clip_hidden, t5], dim=-2), torch.cat([pooled_l, pooled_g], dim=-1)


def load_transformer_and_vae(path: str, prompts: Sequence[str], transformer_class: type, owner: str,
                             pipeline: str) -> tuple[nn.Module, nn.Module]:
    """The transformer and VAE of a local pipeline folder in diffusers layout, after checking ``owner``'s
    prompts and path (nothing is downloaded)."""
    from diffusers import AutoencoderKL

    if not prompts:
        raise ValueError(f"{owner}.prompts: give at least one prompt")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{owner}.path: no folder at {path} (a local {pipeline} pipeline in diffusers "
                                f"layout; nothing is downloaded)")
    return (transformer_class.from_pretrained(path, subfolder="transformer", local_files_only=True),
            AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True))


class FlowPipelineChain(DiffusionModel):
    """The sampling chain of a text-to-image rectified flow on a sigma grid; subclasses supply ``velocity``,
    ``_images``, ``_condition_state``, ``sigmas`` (num_steps + 1,), ``sample_shape`` and ``prompts``."""

    state_key = "latents"
    sigmas: torch.Tensor
    sample_shape: tuple[int, ...]
    prompts: list[str]

    def _set_noise_level(self, noise_level: float) -> None:
        if noise_level < 0:
            raise ValueError(f"{type(self).__name__}.noise_level must be >= 0 (0: the flow ODE), got {noise_level}")
        self.noise_level = float(noise_level)
        self.num_conditions = len(self.prompts)

    @property
    def stochastic_proposals(self) -> bool:
        """At noise level 0 a step is the flow ODE's: deterministic."""
        return self.noise_level > 0

    @abstractmethod
    def velocity(self, x: ImageState, level: int) -> torch.Tensor:
        """The network's (guided) velocity, float32, at sigma_level."""

    @abstractmethod
    def _images(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latents -> images (B, C, H, W) in [0, 1], differentiable."""

    @abstractmethod
    def _condition_state(self, ids: torch.Tensor) -> ImageState:
        """The state entries of each row's prompt id."""

    def _device(self) -> torch.device:
        return self.sigmas.device

    def time(self, level: int) -> float:
        return float(self.sigmas[min(level, self.num_steps)])

    def initial_state(self, generators: Sequence[torch.Generator], conditions: torch.Tensor | None = None) -> ImageState:
        """Prior noise per generator (drawn on the CPU); row b under prompt ``conditions[b]``."""
        if conditions is None:
            if self.num_conditions > 1:
                raise ValueError(f"{type(self).__name__} has {self.num_conditions} prompts: give each row's condition "
                                 f"(decoders do: sample i gets prompt i % {self.num_conditions})")
            conditions = torch.zeros(len(generators), dtype=torch.long)
        ids = torch.as_tensor(conditions, dtype=torch.long).to(self._device())
        return {"latents": row_noise(self.sample_shape, generators, 1, self._device()), **self._condition_state(ids)}

    def denoise(self, x: ImageState, level: int) -> torch.Tensor:
        return self.velocity(x, level)

    def x0_hat(self, x: ImageState, prediction: torch.Tensor, level: int) -> ImageState:
        return {**x, "latents": x0_from_velocity(x["latents"], prediction, self.sigmas[level])}

    def propose(self, x: ImageState, prediction: torch.Tensor, level: int, generators: Sequence[torch.Generator],
                num_candidates: int) -> ImageState:
        """One Euler (a = 0) or SDE (a > 0) step for all B*M candidates; candidate j of row b draws from
        ``generators[b]``."""
        state = repeat_rows(x, num_candidates)
        v = prediction.repeat_interleave(num_candidates, dim=0)
        rows = [g for g in generators for _ in range(num_candidates)]
        return {**state, "latents": self._step(state["latents"], v, level, level + 1, rows)}

    def _step(self, latents: torch.Tensor, v: torch.Tensor, level: int, to: int,
              generators: Sequence[torch.Generator]) -> torch.Tensor:
        """:func:`~svdd_lightning.diffusion.flow.flow_step` from sigma_level to sigma_to; row i's noise from
        ``generators[i]``."""
        return flow_step(latents, v, self.sigmas[level], self.sigmas[to], self.noise_level,
                         lambda: row_noise(self.sample_shape, generators, 1, latents.device), self.sigmas[1])

    def x0_samples(self, x: ImageState, prediction: torch.Tensor, level: int, generators: Sequence[torch.Generator],
                   num_samples: int, num_steps: int) -> ImageState:
        """x_0 drawn by ``num_steps`` SDE steps on an even subgrid of the remaining levels (one step: x0_hat);
        sample j of row b draws from ``generators[b]``."""
        num_steps = min(num_steps, self.num_steps - level)
        state, v = repeat_rows(x, num_samples), prediction.repeat_interleave(num_samples, dim=0)
        rows = [g for g in generators for _ in range(num_samples)]
        latents = rollout(state["latents"], v, even_subgrid(level, self.num_steps, num_steps),
                          lambda latents, k: self.velocity({**state, "latents": latents}, k),
                          lambda latents, v, k, to: self._step(latents, v, k, to, rows))
        return {**state, "latents": latents}

    def forward_noise(self, x0: ImageState, level: int, generators: Sequence[torch.Generator]) -> ImageState:
        """x_t = (1 - t) x_0 + t noise at the level's sigma (the clean level is returned as it is)."""
        t = self.sigmas[min(level, self.num_steps)]
        if t == 0:
            return x0
        noise = row_noise(self.sample_shape, generators, 1, x0["latents"].device)
        return {**x0, "latents": interpolate(x0["latents"], noise, t)}

    def guided_prediction(self, x: ImageState, level: int, guidance: Callable[[torch.Tensor], torch.Tensor],
                          scale: float) -> torch.Tensor:
        """DPS (:func:`~svdd_lightning.diffusion.flow.dps_velocity`) with the gradient with respect to x_t of
        ``guidance(images of x0_hat(x_t))``, through the network."""
        latents = x["latents"].detach().requires_grad_(True)
        state = {**x, "latents": latents}
        v = self.velocity(state, level)
        t = self.sigmas[level]
        (grad,) = torch.autograd.grad(guidance(self._images(x0_from_velocity(latents, v, t))).sum(), latents)
        return dps_velocity(v.detach(), grad, t, scale, self.sigmas[1])

    def decode(self, x0: ImageState) -> list[torch.Tensor]:
        """Images as float32 CPU tensors (C, H, W) in [0, 1], each carrying its prompt as ``image.prompt``."""
        with torch.no_grad():
            images = list(self.images(x0).cpu().float())
        return tag_prompts(images, self.prompts, x0["prompt_id"])

    def images(self, x0: ImageState) -> torch.Tensor:
        """Clean states -> an image batch on the model's device (image rewards' ``score_states`` read it)."""
        return self._images(x0["latents"])

    def sample_files(self):
        """A decoding run writes this model's samples as PNGs and a grid per method."""
        from .outputs import ImageFiles

        return ImageFiles()


class StableDiffusion3(FlowPipelineChain):
    """Stable Diffusion 3 / 3.5 from a local diffusers folder (``transformer/``, ``vae/``, ``scheduler/``,
    ``text_encoder``/``tokenizer``, ``text_encoder_2``/``tokenizer_2``, optionally ``text_encoder_3``/
    ``tokenizer_3``): the guided velocity on the scheduler's sigma grid and the VAE decoding.

    Args:
        path: the local pipeline folder; nothing is downloaded.
        prompts: sample i is conditioned on ``prompts[i % len(prompts)]``.
        num_steps: steps of the sigma grid (SD3: 28).
        guidance_scale: classifier-free guidance, v = v_u + scale * (v_c - v_u) (SD3: 7.0; 1 turns it off).
        max_sequence_length: T5 tokens per prompt (the pipeline's default 256).
        height: image height in pixels (default: the transformer's ``sample_size`` times the VAE's factor).
        width: image width in pixels (default: as height).
        noise_level: the SDE's noise level a (0: the flow ODE, the pipeline's sampler; SVDD, SMC and the
            search decoders need a > 0, e.g. 0.7).
    """

    def __init__(self, path: str, prompts: Sequence[str], num_steps: int = 28, guidance_scale: float = 7.0,
                 max_sequence_length: int = 256, height: int | None = None, width: int | None = None,
                 noise_level: float = 0.7) -> None:
        require("transformers", extra="images", feature="StableDiffusion3")
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

        super().__init__()
        self.transformer, self.vae = load_transformer_and_vae(path, prompts, SD3Transformer2DModel,
                                                              "StableDiffusion3", "Stable Diffusion 3")
        config = self.transformer.config
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        height = height or config.sample_size * factor
        width = width or height
        if height % (factor * config.patch_size) or width % (factor * config.patch_size):
            raise ValueError(f"StableDiffusion3.height/width: {height} x {width} must be multiples of "
                             f"{factor * config.patch_size} (VAE factor x patch size)")
        self.sample_shape = (config.in_channels, height // factor, width // factor)
        scheduler = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler", local_files_only=True)
        seq_len = (height // factor // config.patch_size) * (width // factor // config.patch_size)
        self.register_buffer("sigmas", flow_sigmas(scheduler, num_steps, seq_len), persistent=False)
        embeds, pooled = encode_sd3_prompts(path, [*prompts, ""], max_sequence_length, config.joint_attention_dim)
        self.register_buffer("prompt_table", embeds[:-1], persistent=False)
        self.register_buffer("pooled_table", pooled[:-1], persistent=False)
        self.register_buffer("empty_prompt", embeds[-1:], persistent=False)
        self.register_buffer("empty_pooled", pooled[-1:], persistent=False)
        self.prompts, self.guidance_scale, self.num_steps = list(prompts), float(guidance_scale), num_steps
        self._set_noise_level(noise_level)
        self.eval().requires_grad_(False)

    def _condition_state(self, ids: torch.Tensor) -> ImageState:
        return {"prompt_embeds": self.prompt_table[ids], "pooled": self.pooled_table[ids], "prompt_id": ids}

    def velocity(self, x: ImageState, level: int) -> torch.Tensor:
        """The guided velocity (float32) at level ``level`` (sigma_level), x_t = (1 - t) x_0 + t noise."""
        latents, n = x["latents"], len(x["latents"])
        dtype = self.transformer.dtype
        timestep = (self.sigmas[level] * 1000).expand(n)
        if self.guidance_scale == 1:
            return self.transformer(hidden_states=latents.to(dtype), timestep=timestep,
                                    encoder_hidden_states=x["prompt_embeds"].to(dtype),
                                    pooled_projections=x["pooled"].to(dtype)).sample.float()
        out = self.transformer(
            hidden_states=torch.cat([latents, latents]).to(dtype), timestep=torch.cat([timestep, timestep]),
            encoder_hidden_states=torch.cat([self.empty_prompt.expand(n, -1, -1), x["prompt_embeds"]]).to(dtype),
            pooled_projections=torch.cat([self.empty_pooled.expand(n, -1), x["pooled"]]).to(dtype)).sample.float()
        uncond, cond = out.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)

    def _images(self, x0: torch.Tensor) -> torch.Tensor:
        """VAE decoding of latents (x / scaling_factor + shift_factor) to images in [0, 1], differentiable."""
        config = self.vae.config
        latents = x0.to(self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
        return (self.vae.decode(latents).sample.float() / 2 + 0.5).clamp(0, 1)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """Flux's packing: (B, C, h, w) -> (B, h/2 * w/2, 4C), each 2 x 2 patch one token."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2 * (w // 2), 4 * c)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for latents of h x w."""
    b, _, channels = tokens.shape
    return tokens.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, channels // 4, h, w)


class Flux(FlowPipelineChain):
    """Flux (dev or schnell) from a local diffusers folder (``transformer/``, ``vae/``, ``scheduler/``,
    ``text_encoder``/``tokenizer`` (CLIP, pooled), ``text_encoder_2``/``tokenizer_2`` (T5)): the velocity of
    ``FluxTransformer2DModel`` on packed latents, with the guidance embedding of guidance-distilled models,
    on the pipeline's shifted sigma grid, and the VAE decoding.

    States keep the latents unpacked, (B, C, h, w); the network sees them packed in 2 x 2 tokens (a
    permutation, so steps in either form agree). There is no unconditional pass: Flux dev is
    guidance-distilled and takes ``guidance_scale`` as an input.

    Args:
        path: the local pipeline folder; nothing is downloaded.
        prompts: sample i is conditioned on ``prompts[i % len(prompts)]``.
        num_steps: steps of the sigma grid (dev: 28 to 50; schnell: 4).
        guidance_scale: the embedded guidance of a model with ``guidance_embeds`` (dev: 3.5); ignored otherwise.
        max_sequence_length: T5 tokens per prompt (dev: 512, schnell: 256).
        height: image height in pixels (default: 128 latent pixels times the VAE's factor, as the pipeline).
        width: image width in pixels (default: as height).
        noise_level: the SDE's noise level a (0: the flow ODE; SVDD, SMC and the search decoders need a > 0).
    """

    def __init__(self, path: str, prompts: Sequence[str], num_steps: int = 28, guidance_scale: float = 3.5,
                 max_sequence_length: int = 512, height: int | None = None, width: int | None = None,
                 noise_level: float = 0.7) -> None:
        require("transformers", extra="images", feature="Flux")
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

        super().__init__()
        self.transformer, self.vae = load_transformer_and_vae(path, prompts, FluxTransformer2DModel, "Flux", "Flux")
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        height = height or 128 * factor
        width = width or height
        if height % (2 * factor) or width % (2 * factor):
            raise ValueError(f"Flux.height/width: {height} x {width} must be multiples of {2 * factor} "
                             f"(VAE factor x 2 for packing)")
        h, w = height // factor, width // factor
        self.sample_shape = (self.transformer.config.in_channels // 4, h, w)
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 1] += torch.arange(h // 2)[:, None]
        ids[..., 2] += torch.arange(w // 2)[None, :]
        self.register_buffer("image_ids", ids.reshape(-1, 3), persistent=False)
        scheduler = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler", local_files_only=True)
        self.register_buffer("sigmas", flow_sigmas(scheduler, num_steps, h // 2 * (w // 2), uniform=True),
                             persistent=False)
        with torch.no_grad():
            clip_tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
            clip = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
            tokens = clip_tokenizer(list(prompts), padding="max_length", max_length=clip_tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            pooled = clip(tokens.input_ids).pooler_output.float()
            t5_tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer_2", local_files_only=True)
            t5 = T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", local_files_only=True)
            tokens = t5_tokenizer(list(prompts), padding="max_length", max_length=max_sequence_length,
                                  truncation=True, return_tensors="pt")
            embeds = t5(tokens.input_ids)[0].float()
        self.register_buffer("prompt_table", embeds, persistent=False)
        self.register_buffer("pooled_table", pooled, persistent=False)
        self.register_buffer("text_ids", torch.zeros(embeds.shape[1], 3), persistent=False)
        self.prompts, self.guidance_scale, self.num_steps = list(prompts), float(guidance_scale), num_steps
        self._set_noise_level(noise_level)
        self.eval().requires_grad_(False)

    def _condition_state(self, ids: torch.Tensor) -> ImageState:
        return {"prompt_embeds": self.prompt_table[ids], "pooled": self.pooled_table[ids], "prompt_id": ids}

    def velocity(self, x: ImageState, level: int) -> torch.Tensor:
        """The velocity (float32, unpacked) at level ``level`` (sigma_level), x_t = (1 - t) x_0 + t noise."""
        latents, dtype = x["latents"], self.transformer.dtype
        n, (_, h, w) = len(latents), self.sample_shape
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((n,), self.guidance_scale, device=latents.device)
        out = self.transformer(hidden_states=pack_latents(latents).to(dtype), timestep=self.sigmas[level].expand(n),
                               guidance=guidance, pooled_projections=x["pooled"].to(dtype),
                               encoder_hidden_states=x["prompt_embeds"].to(dtype), txt_ids=self.text_ids,
                               img_ids=self.image_ids).sample.float()
        return unpack_latents(out, h, w)

    def _images(self, x0: torch.Tensor) -> torch.Tensor:
        """VAE decoding of latents (x / scaling_factor + shift_factor) to images in [0, 1], differentiable."""
        config = self.vae.config
        latents = x0.to(self.vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
        return (self.vae.decode(latents).sample.float() / 2 + 0.5).clamp(0, 1)
