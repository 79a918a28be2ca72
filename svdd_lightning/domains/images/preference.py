"""Text-to-image preference rewards on prompt-image pairs, from local checkpoints (nothing is downloaded):

- :class:`PickScore`: PickScore v1, a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences, from a
  transformers ``CLIPModel`` folder; the score is CLIP's logit, exp(logit_scale) * cos(image, text).
- :class:`HPSv2`: Human Preference Score v2 / v2.1, an OpenCLIP ViT-H/14 checkpoint (``HPS_v2*.pt``), read
  with ``torch.load(weights_only=True)`` into a transformers ``CLIPModel``; the score is cos(image, text).
- :class:`ImageRewardScore`: ImageReward v1.0 (BLIP ViT-L + BERT cross-attention + MLP), from ``ImageReward.pt``
  (weights only) and its ``med_config.json`` into transformers' BLIP modules.

Prompts: a state of a prompt-conditioned model (Stable Diffusion) carries its ``prompt_id``, and the rewards
read the model's ``prompts`` through ``score_states``; decoded images carry their prompt as ``image.prompt``.
A reward built with ``prompt=...`` scores every image against that one prompt (also for DPS, whose
``relaxed(images)`` sees images only).
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...extras import require
from .rewards import Images, NetworkImageReward, as_batch, clip_preprocess, require_path


class PromptImageReward(NetworkImageReward):
    """A network reward of (prompt, image) pairs; text embeddings are computed once per distinct prompt."""

    prompt: str | None

    @abstractmethod
    def _text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings (P, D) of prompts, on the networks' device."""

    @abstractmethod
    def _pair_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Scores (B,) of images (B, C, H, W) in [0, 1] against text embeddings (B, D), differentiable in the images."""

    def _prompts(self, prompts: Sequence[str] | None, n: int, where: str) -> list[str]:
        if prompts is None:
            if self.prompt is None:
                raise ValueError(f"{type(self).__name__}.prompt: {where} carry no prompt; give the reward a prompt "
                                 f"(prompt: ...) or score images of a prompt-conditioned model")
            return [self.prompt] * n
        if len(prompts) != n:
            raise ValueError(f"{type(self).__name__}: {len(prompts)} prompts for {n} images")
        return list(prompts)

    def _text(self, prompts: list[str]) -> torch.Tensor:
        cache = self.__dict__.setdefault("_text_cache", {})
        new = [p for p in dict.fromkeys(prompts) if p not in cache]
        if new:
            with torch.no_grad():
                cache.update(zip(new, self._text_embeddings(new).float()))
        return torch.stack([cache[p] for p in prompts]).to(self._device())

    def relaxed(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        prompts = self._prompts(prompts, len(images), "the images")
        return self._pair_scores(images.to(self._device()).float(), self._text(prompts))

    def __call__(self, images: Images) -> list[float]:
        """Scores of images against their own ``prompt`` attribute (set by the models' ``decode``), or the
        reward's prompt."""
        found = [getattr(image, "prompt", None) for image in images]
        prompts = None if any(p is None for p in found) else found
        batch = as_batch(images)
        prompts = self._prompts(prompts, len(batch), "some images")
        return self._score_pairs(batch, prompts).cpu().tolist()

    def score_states(self, model: Any, x0: Any) -> torch.Tensor | None:
        """Scores of a prompt-conditioned model's clean states against each row's own prompt (or the
        reward's prompt), on the device; None for a model without ``images``."""
        images = getattr(model, "images", None)
        if not callable(images):
            return None
        ids = x0.get("prompt_id") if isinstance(x0, dict) else None
        model_prompts = getattr(model, "prompts", None)
        prompts = [model_prompts[i] for i in ids.tolist()] if ids is not None and model_prompts else None
        with torch.no_grad():
            batch = images(x0)
        return self._score_pairs(batch, self._prompts(prompts, len(batch), "the model's states"))

    def _score_pairs(self, batch: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from ...core.precision import float32_scoring

        with torch.no_grad(), float32_scoring():
            return torch.cat([self.relaxed(batch[i: i + self.batch_size], prompts[i: i + self.batch_size]).float()
                              for i in range(0, len(batch), self.batch_size)])


class CLIPPreference(PromptImageReward):
    """A transformers ``CLIPModel`` and its tokenizer scoring cos(image, text), times exp(logit_scale) when
    ``use_logit_scale``."""

    use_logit_scale: bool

    def _setup(self, clip: nn.Module, tokenizer: Any, prompt: str | None, batch_size: int) -> None:
        self.clip, self.tokenizer = clip.eval().requires_grad_(False), tokenizer
        self.prompt, self.batch_size = prompt, batch_size
        self.image_size = clip.config.vision_config.image_size
        self.max_length = min(tokenizer.model_max_length, clip.config.text_config.max_position_embeddings)

    def networks(self) -> list[nn.Module]:
        return [self.clip]

    def _text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self._device())
        text = self.clip.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        text = getattr(text, "pooler_output", text).float()
        return text / text.norm(dim=-1, keepdim=True)

    def _pair_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        pixels = clip_preprocess(images, self.image_size).to(self.clip.dtype)
        image = self.clip.get_image_features(pixel_values=pixels)
        image = getattr(image, "pooler_output", image).float()
        cosine = (image / image.norm(dim=-1, keepdim=True) * text).sum(dim=-1)
        return cosine * self.clip.logit_scale.float().exp() if self.use_logit_scale else cosine


class PickScore(CLIPPreference):
    """PickScore v1 (``yuvalkirstain/PickScore_v1``): exp(logit_scale) * cos(CLIP image, CLIP text), about 18
    to 23 for real images.

    Args:
        model_path: local folder of the PickScore ``CLIPModel`` (``config.json`` and safetensors weights).
        tokenizer_path: local folder of its tokenizer (PickScore uses the one of
            ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``); default: ``model_path``.
        prompt: one prompt for every image (default: each image's own prompt).
        batch_size: images per network call.
    """

    name = "pickscore"
    unit = "PickScore"
    use_logit_scale = True

    def __init__(self, model_path: str, tokenizer_path: str | None = None, prompt: str | None = None,
                 batch_size: int = 16) -> None:
        require("transformers", extra="images", feature="PickScore")
        from transformers import CLIPModel, CLIPTokenizer

        tokenizer_path = tokenizer_path or model_path
        require_path(model_path, "PickScore.model_path", folder=True)
        require_path(tokenizer_path, "PickScore.tokenizer_path", folder=True)
        clip = CLIPModel.from_pretrained(model_path, local_files_only=True, use_safetensors=True)
        self._setup(clip, CLIPTokenizer.from_pretrained(tokenizer_path, local_files_only=True), prompt, batch_size)


def openclip_to_transformers(state: dict[str, torch.Tensor], vision_head_width: int = 80, text_head_width: int = 64,
                             text_ids: dict[str, int] | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """A transformers ``CLIPConfig`` and state dict from an OpenCLIP (or OpenAI CLIP) ViT state dict.

    The architecture is read from the tensor shapes; attention heads are width / head width (OpenCLIP's
    ViT-H/14: 80 in the image tower, 64 in the text tower; ViT-L/14: 64 in both). ``text_ids`` gives the
    tokenizer's ``bos/eos/pad_token_id``.
    """
    from transformers import CLIPConfig

    def layers(prefix: str) -> int:
        return 1 + max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))

    vision_width, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["token_embedding.weight"].shape[1]
    config = CLIPConfig(
        projection_dim=state["text_projection"].shape[1],
        vision_config=dict(hidden_size=vision_width, patch_size=patch, image_size=grid * patch,
                           num_hidden_layers=layers("visual.transformer.resblocks."),
                           num_attention_heads=vision_width // vision_head_width,
                           intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                           hidden_act="gelu"),
        text_config=dict(hidden_size=text_width, vocab_size=state["token_embedding.weight"].shape[0],
                         max_position_embeddings=state["positional_embedding"].shape[0],
                         num_hidden_layers=layers("transformer.resblocks."),
                         num_attention_heads=text_width // text_head_width,
                         intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                         hidden_act="gelu", **(text_ids or {})))
    out = {"vision_model.embeddings.class_embedding": state["visual.class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
           "visual_projection.weight": state["visual.proj"].t(),
           "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
           "text_projection.weight": state["text_projection"].t(),
           "logit_scale": state["logit_scale"].reshape(())}
    for source, target in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                           ("ln_final", "text_model.final_layer_norm")):
        for p in ("weight", "bias"):
            out[f"{target}.{p}"] = state[f"{source}.{p}"]
    block_names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for source_prefix, target_prefix, n in (("visual.transformer.resblocks.", "vision_model.encoder.layers.",
                                             config.vision_config.num_hidden_layers),
                                            ("transformer.resblocks.", "text_model.encoder.layers.",
                                             config.text_config.num_hidden_layers)):
        for i in range(n):
            src, dst = f"{source_prefix}{i}.", f"{target_prefix}{i}."
            for name, new in block_names.items():
                for p in ("weight", "bias"):
                    out[f"{dst}{new}.{p}"] = state[f"{src}{name}.{p}"]
            for p in ("weight", "bias"):
                for part, chunk in zip("qkv", state[f"{src}attn.in_proj_{p}"].chunk(3)):
                    out[f"{dst}self_attn.{part}_proj.{p}"] = chunk
    return config, out


class HPSv2(CLIPPreference):
    """Human Preference Score v2 / v2.1: cos(image, text) of the HPS-fine-tuned OpenCLIP ViT-H/14, about 0.2
    to 0.35 for real images.

    Args:
        checkpoint: the HPS checkpoint (``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``): an OpenCLIP
            state dict, or a dict holding it under ``state_dict``, read with ``torch.load(weights_only=True)``.
        tokenizer_path: local folder of OpenCLIP's tokenizer as a transformers ``CLIPTokenizer`` (e.g. that of
            ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``).
        vision_head_width: attention head width of the image tower (80 for ViT-H/14).
        text_head_width: attention head width of the text tower (64 for ViT-H/14).
        prompt: one prompt for every image (default: each image's own prompt).
        batch_size: images per network call.
    """

    name = "hpsv2"
    unit = "HPS v2"
    use_logit_scale = False

    def __init__(self, checkpoint: str, tokenizer_path: str, vision_head_width: int = 80, text_head_width: int = 64,
                 prompt: str | None = None, batch_size: int = 16) -> None:
        require("transformers", extra="images", feature="HPSv2")
        from transformers import CLIPModel, CLIPTokenizer

        require_path(checkpoint, "HPSv2.checkpoint", folder=False)
        require_path(tokenizer_path, "HPSv2.tokenizer_path", folder=True)
        state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if "visual.conv1.weight" not in state:
            raise ValueError(f"HPSv2.checkpoint: {checkpoint} is not an OpenCLIP ViT state dict (no visual.conv1.weight)")
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
        for field, width, head in (("vision_head_width", state["visual.conv1.weight"].shape[0], vision_head_width),
                                   ("text_head_width", state["token_embedding.weight"].shape[1], text_head_width)):
            if width % head:
                raise ValueError(f"HPSv2.{field}: {head} does not divide the tower's width {width}")
        config, weights = openclip_to_transformers(state, vision_head_width, text_head_width, ids)
        clip = CLIPModel(config)
        missing, unexpected = clip.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"HPSv2.checkpoint: weights do not fit the CLIP read from their shapes (missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]})")
        self._setup(clip, tokenizer, prompt, batch_size)


#: ImageReward's standardisation of its MLP output (the published mean and std over its training pairs)
IMAGE_REWARD_MEAN, IMAGE_REWARD_STD = 0.16717362830052426, 1.0333394966054072
_TIMM_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
               "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


class ImageRewardScore(PromptImageReward):
    """ImageReward v1.0 (Xu et al. 2023): BLIP's ViT-L/16 image tokens cross-attended by its BERT text
    encoder, an MLP on the [CLS] feature, standardised (about -2 to 2; higher is preferred).

    Built from the published checkpoint's layout with transformers' BLIP modules (the ``image-reward``
    package needs timm 0.6, fairscale and torchvision and downloads at load): ``blip.visual_encoder.*`` (a
    timm ViT) -> ``BlipVisionModel``, ``blip.text_encoder.*`` (BLIP's BERT) -> ``BlipTextModel``, ``mlp.*``.

    Args:
        checkpoint: ``ImageReward.pt`` (a state dict), read with ``torch.load(weights_only=True)``.
        med_config: its ``med_config.json`` (the BERT settings).
        tokenizer_path: local folder of a ``bert-base-uncased`` tokenizer.
        head_width: attention head width of the ViT (64 for ViT-L/16).
        prompt: one prompt for every image (default: each image's own prompt).
        batch_size: images per network call.
    """

    name = "image_reward"
    unit = "ImageReward"

    def __init__(self, checkpoint: str, med_config: str, tokenizer_path: str, head_width: int = 64,
                 prompt: str | None = None, batch_size: int = 16) -> None:
        require("transformers", extra="images", feature="ImageRewardScore")
        import json

        from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        from .rewards import AestheticMLP

        for value, field, folder in ((checkpoint, "checkpoint", False), (med_config, "med_config", False),
                                     (tokenizer_path, "tokenizer_path", True)):
            require_path(value, f"ImageRewardScore.{field}", folder=folder)
        state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
        if "blip.visual_encoder.patch_embed.proj.weight" not in state:
            raise ValueError(f"ImageRewardScore.checkpoint: {checkpoint} is not an ImageReward state dict "
                             f"(no blip.visual_encoder.patch_embed.proj.weight)")
        vision = {k.removeprefix("blip.visual_encoder."): v for k, v in state.items()
                  if k.startswith("blip.visual_encoder.")}
        width, _, patch, _ = vision["patch_embed.proj.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in vision if k.startswith("blocks."))
        grid = round((vision["pos_embed"].shape[1] - 1) ** 0.5)
        self.vision = BlipVisionModel(BlipVisionConfig(
            hidden_size=width, intermediate_size=vision["blocks.0.mlp.fc1.weight"].shape[0], num_hidden_layers=depth,
            num_attention_heads=width // head_width, image_size=grid * patch, patch_size=patch, layer_norm_eps=1e-6,
            hidden_act="gelu"))
        weights = {"embeddings.class_embedding": vision["cls_token"], "embeddings.position_embedding": vision["pos_embed"],
                   "post_layernorm.weight": vision["norm.weight"], "post_layernorm.bias": vision["norm.bias"]}
        for p in ("weight", "bias"):
            weights[f"embeddings.patch_embedding.{p}"] = vision[f"patch_embed.proj.{p}"]
            for i in range(depth):
                for name, new in _TIMM_BLOCK.items():
                    weights[f"encoder.layers.{i}.{new}.{p}"] = vision[f"blocks.{i}.{name}.{p}"]
        self.vision.load_state_dict(weights)
        med = json.loads(Path(med_config).read_text())
        self.text = BlipTextModel(BlipTextConfig(
            vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=width,
            intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
            num_attention_heads=med["num_attention_heads"], max_position_embeddings=med["max_position_embeddings"],
            layer_norm_eps=med.get("layer_norm_eps", 1e-12), hidden_act=med.get("hidden_act", "gelu"),
            pad_token_id=med.get("pad_token_id", 0)), add_pooling_layer=False)
        text = {k.removeprefix("blip.text_encoder."): v for k, v in state.items() if k.startswith("blip.text_encoder.")
                and not k.endswith("position_ids")}
        self.text.load_state_dict(text, strict=False)
        missing = [k for k in self.text.state_dict() if k not in text and not k.endswith("position_ids")]
        if missing:
            raise ValueError(f"ImageRewardScore.checkpoint: the text encoder misses {missing[:3]}: is med_config the "
                             f"checkpoint's?")
        self.mlp = AestheticMLP(med["hidden_size"])
        self.mlp.load_state_dict({k.removeprefix("mlp."): v for k, v in state.items() if k.startswith("mlp.")})
        for network in self.networks():
            network.eval().requires_grad_(False)
        self.tokenizer = BertTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        self.image_size, self.prompt, self.batch_size = grid * patch, prompt, batch_size

    def networks(self) -> list[nn.Module]:
        return [self.vision, self.text, self.mlp]

    def _text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Token ids and attention masks (ImageReward's: padded to 35 tokens), kept as floats side by side."""
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        return torch.cat([tokens.input_ids, tokens.attention_mask], dim=1).to(self._device())

    def _pair_scores(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        ids, mask = text.long().chunk(2, dim=1)
        pixels = clip_preprocess(images, self.image_size)
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        features = self.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_tokens,
                             encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long,
                                                               device=ids.device)).last_hidden_state[:, 0]
        return (self.mlp(features.float()).squeeze(-1) - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD
