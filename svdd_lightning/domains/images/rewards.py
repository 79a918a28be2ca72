"""Image rewards, batched over decoded images: float tensors (C, H, W) in [0, 1], as a list (what
``DiffusersChain.decode`` gives) or one (B, C, H, W) tensor.

- :class:`Compressibility`: minus the JPEG size in kB (DDPO's compressibility; not differentiable).
- :class:`AestheticScore`: the LAION aesthetic predictor v2 on CLIP ViT-L/14 image embeddings.
- :class:`ClassifierLogProb`: log p(class | image) of a classifier checkpoint (e.g. the MNIST CNN).

Evaluation scores (is an image still a digit?): :class:`ClassifierConfidence` (the classifier's top
probability) and :class:`InkFraction` (the fraction of bright pixels: 0 for a blank image).

The network rewards are differentiable: ``relaxed(images)`` scores a (B, C, H, W) batch with gradients,
for DPS; ``to(device)`` moves their networks (``DecodingModule`` calls it).
"""
from __future__ import annotations

import io
from abc import abstractmethod
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ... import checkpoints
from ...core.precision import float32_scoring
from ...core.reward import Reward
from ...core.workers import ChunkedWorkers
from ...extras import require

Images = Sequence[torch.Tensor] | torch.Tensor
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def require_path(path: str | Path, field: str, folder: bool) -> None:
    """A one-line FileNotFoundError naming ``field`` when ``path`` is not an existing folder (or file)."""
    if not (Path(path).is_dir() if folder else Path(path).is_file()):
        kind = "folder" if folder else "file"
        raise FileNotFoundError(f"{field}: no {kind} at {path} (nothing is downloaded: give a local path, "
                                f"see docs/images.md)")


def as_batch(images: Images) -> torch.Tensor:
    """A (B, C, H, W) tensor of the images."""
    return images if isinstance(images, torch.Tensor) else torch.stack(list(images))


def to_uint8(images: Images) -> list[np.ndarray]:
    """uint8 arrays (H, W, C), or (H, W) for one channel, of images in [0, 1]."""
    batch = (as_batch(images).detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
    arrays = batch.permute(0, 2, 3, 1).numpy()
    return [a[..., 0] if a.shape[-1] == 1 else a for a in arrays]


def jpeg_kilobytes(image: np.ndarray, quality: int = 95) -> float:
    """Size in kB (1000 bytes) of a uint8 image saved as JPEG by PIL at ``quality``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


def _jpeg_chunk(images: list[np.ndarray], quality: int) -> list[float]:
    return [jpeg_kilobytes(image, quality) for image in images]


class Compressibility(Reward):
    """DDPO's JPEG compressibility: -(size in kB of the uint8 image saved as JPEG at ``quality``).

    ``processes`` > 1 encodes batches of at least 32 images in worker processes (:class:`ChunkedWorkers`).

    Args:
        quality: JPEG quality (DDPO: 95).
        processes: worker processes that encode in parallel (1: in this process).
    """

    name = "compressibility"
    unit = "-JPEG size, kB"

    def __init__(self, quality: int = 95, processes: int = 1) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"Compressibility.quality must be in [1, 100], got {quality}")
        self.quality = quality
        self.workers = ChunkedWorkers(processes, min_chunk=16, owner="Compressibility")

    def __call__(self, images: Images) -> list[float]:
        return self.submit(images)()

    def submit(self, images: Images):
        """Start encoding in the worker processes and return at once (see :meth:`ChunkedWorkers.submit`)."""
        pending = self.workers.submit(partial(_jpeg_chunk, quality=self.quality), to_uint8(images))
        return lambda: [-s for s in pending()]

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        self.workers.close()


class NetworkImageReward(Reward):
    """A reward computed by torch networks on image batches: scored in chunks without gradients, or
    differentiably by :meth:`relaxed`."""

    batch_size: int

    @abstractmethod
    def relaxed(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (B,) of images (B, C, H, W) in [0, 1], differentiable in the images."""

    @abstractmethod
    def networks(self) -> list[nn.Module]:
        """The networks the reward runs (moved by :meth:`to`)."""

    def _device(self) -> torch.device:
        return next(self.networks()[0].parameters()).device

    def __call__(self, images: Images) -> list[float]:
        """Scores in float32, also inside a mixed-precision run (autocast is turned off: bf16 rounding
        would tie the candidates SVDD compares)."""
        return self._score(as_batch(images)).cpu().tolist()

    def score_states(self, model, x0) -> torch.Tensor | None:
        """Scores of a model's clean states through its ``images`` (e.g. Stable Diffusion's VAE decoding),
        on the device: the images never go to the host. None for a model without ``images``."""
        images = getattr(model, "images", None)
        if not callable(images):
            return None
        with torch.no_grad():
            return self._score(images(x0))

    def _score(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), float32_scoring():
            return torch.cat([self.relaxed(chunk).float() for chunk in batch.split(self.batch_size)])

    def to(self, device: torch.device | str) -> "NetworkImageReward":
        for network in self.networks():
            network.to(device)
        return self


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's image preprocessing in torch: grey images repeated to RGB, the shorter side resized to
    ``size`` (bicubic, antialiased), a centre crop of ``size`` x ``size``, CLIP's mean and std.

    Differentiable; it matches ``CLIPImageProcessor`` up to resampling (PIL's bicubic on uint8 there).
    """
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        h, w = max(size, round(h * scale)), max(size, round(w * scale))
        images = F.interpolate(images, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (h - size) // 2, (w - size) // 2
    images = images[..., top: top + size, left: left + size]
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


class AestheticMLP(nn.Module):
    """The LAION aesthetic predictor v2 head, layer for layer as published (state dict keys ``layers.0``,
    ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``): linear layers without activations."""

    def __init__(self, embedding_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(embedding_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                    nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                                    nn.Linear(16, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class AestheticScore(NetworkImageReward):
    """LAION aesthetic predictor v2 (``sac+logos+ava1-l14-linearMSE.pth``): its MLP on the L2-normalised
    CLIP ViT-L/14 image embedding (``CLIPModel.get_image_features``); roughly 1 to 10.

    Args:
        clip_path: local folder of a CLIP model (``openai/clip-vit-large-patch14``) or of a
            ``CLIPVisionModelWithProjection``; nothing is downloaded.
        predictor_path: the predictor's state dict (``layers.N.weight`` / ``.bias``), read with
            ``torch.load(weights_only=True)``; its input size must be CLIP's projection dimension.
        batch_size: images per network call.
    """

    name = "aesthetic"
    unit = "LAION aesthetic score"

    def __init__(self, clip_path: str, predictor_path: str, batch_size: int = 32) -> None:
        require("transformers", extra="images", feature="AestheticScore")
        from transformers import AutoConfig, CLIPVisionModelWithProjection

        require_path(clip_path, "AestheticScore.clip_path", folder=True)
        require_path(predictor_path, "AestheticScore.predictor_path", folder=False)
        config = AutoConfig.from_pretrained(clip_path, local_files_only=True)
        if config.model_type == "clip":  # a whole CLIP model: its vision tower and image projection
            config.vision_config.projection_dim = config.projection_dim
            config = config.vision_config
        self.clip = CLIPVisionModelWithProjection.from_pretrained(clip_path, config=config, local_files_only=True)
        state = torch.load(Path(predictor_path), map_location="cpu", weights_only=True)
        embedding_dim = state["layers.0.weight"].shape[1]
        if embedding_dim != config.projection_dim:
            raise ValueError(f"AestheticScore: the predictor takes {embedding_dim}-dim embeddings, the CLIP model at "
                             f"{clip_path} gives {config.projection_dim}")
        self.mlp = AestheticMLP(embedding_dim)
        self.mlp.load_state_dict(state)
        for network in self.networks():
            network.eval().requires_grad_(False)
        self.image_size, self.batch_size = config.image_size, batch_size

    def networks(self) -> list[nn.Module]:
        return [self.clip, self.mlp]

    def relaxed(self, images: torch.Tensor) -> torch.Tensor:
        pixels = clip_preprocess(images.to(self._device()).float(), self.image_size)
        embeddings = self.clip(pixel_values=pixels.to(self.clip.dtype)).image_embeds.float()
        return self.mlp(embeddings / embeddings.norm(dim=-1, keepdim=True)).squeeze(-1)


class ClassifierLogProb(NetworkImageReward):
    """log p(``target_class`` | image) of a classifier saved with :func:`svdd_lightning.checkpoints.save`
    (e.g. :class:`~.networks.MNISTClassifier`), called on images in [0, 1].

    Args:
        checkpoint: directory of the classifier checkpoint.
        target_class: the class whose log-probability is the reward.
        batch_size: images per network call.
    """

    unit = "log probability"

    def __init__(self, checkpoint: str, target_class: int, batch_size: int = 256) -> None:
        self.network = checkpoints.load(checkpoint).requires_grad_(False)
        self.target_class, self.batch_size = int(target_class), batch_size
        self.name = f"log_p_class_{self.target_class}"

    def networks(self) -> list[nn.Module]:
        return [self.network]

    def relaxed(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.network(images.to(self._device()).float())
        return torch.log_softmax(logits.float(), dim=-1)[:, self.target_class]


class ClassifierConfidence(ClassifierLogProb):
    """max_c p(c | image) of a classifier checkpoint: near 1 for a clear digit, low for noise or a blank.

    Args:
        checkpoint: directory of the classifier checkpoint.
        batch_size: images per network call.
    """

    def __init__(self, checkpoint: str, batch_size: int = 256) -> None:
        super().__init__(checkpoint, target_class=0, batch_size=batch_size)
        self.name, self.unit = "classifier_confidence", "probability"

    def relaxed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(images.to(self._device()).float()).float(), dim=-1).amax(dim=-1)


class InkFraction(Reward):
    """Fraction of pixels brighter than ``threshold`` (mean over channels): 0 for a blank image, 0.10 on
    average for an MNIST digit padded to 32 x 32, near 0.5 for uniform noise.

    Args:
        threshold: brightness (in [0, 1]) above which a pixel counts as ink.
    """

    name = "ink_fraction"
    unit = "fraction of pixels"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)

    def __call__(self, images: Images) -> list[float]:
        batch = as_batch(images).float()
        return (batch.mean(dim=1) > self.threshold).flatten(1).float().mean(dim=1).tolist()
