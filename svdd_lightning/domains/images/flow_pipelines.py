"""Rectified-flow text-to-image models from local diffusers folders: Stable Diffusion 3 / 3.5.

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
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...extras import require

ImageState = dict[str, torch.Tensor]


def flow_sigmas(scheduler_config: dict[str, Any], num_steps: int, image_seq_len: int) -> torch.Tensor:
    """The sigmas (num_steps + 1,) from 1 to 0 of ``FlowMatchEulerDiscreteScheduler`` for ``num_steps`` steps,
    with the config's shift (or, under ``use_dynamic_shifting``, the shift of ``image_seq_len`` latent tokens
    that diffusers' SD3 and Flux pipelines compute)."""
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


class StableDiffusion3(nn.Module):
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
    """

    state_key = "latents"

    def __init__(self, path: str, prompts: Sequence[str], num_steps: int = 28, guidance_scale: float = 7.0,
                 max_sequence_length: int = 256, height: int | None = None, width: int | None = None) -> None:
        require("transformers", extra="images", feature="StableDiffusion3")
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

        super().__init__()
        if not prompts:
            raise ValueError("StableDiffusion3.prompts: give at least one prompt")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"StableDiffusion3.path: no folder at {path} (a local Stable Diffusion 3 "
                                    f"pipeline in diffusers layout; nothing is downloaded)")
        self.transformer = SD3Transformer2DModel.from_pretrained(path, subfolder="transformer", local_files_only=True)
        self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
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
