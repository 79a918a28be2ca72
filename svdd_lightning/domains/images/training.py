"""Training the image domain's own models: a diffusers UNet as a DDPM (noise-prediction loss) or as a
rectified flow's velocity (flow-matching loss), each with an EMA copy for sampling, and the digit classifier
behind the classifier reward."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ...lightning.training import TrainingModule, exponential_moving_average
from ...diffusion.flow import interpolate
from .diffusers_model import DiffusersDiffusion
from .pixel_flow import PixelFlow


def denoising_loss(model: DiffusersDiffusion, x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
                   class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM's simple loss: mean squared error of the UNet's output against its target (the noise, v or
    x_0, by the scheduler's ``prediction_type``) at x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
    scheduler = model.scheduler
    noisy = scheduler.add_noise(x0, noise, timesteps)
    kind = scheduler.config.prediction_type
    target = {"epsilon": noise, "sample": x0}.get(kind)
    if kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    output = model.unet(noisy, timesteps, class_labels=class_labels).sample
    return F.mse_loss(output[:, :x0.shape[1]], target)


class EMAPretraining(TrainingModule):
    """Trains ``model`` with an exponential moving average of its weights: ``model`` is the EMA copy
    (validated, exported and sampled; the decay warms up from 0.1 to ``ema_decay``), the optimiser updates
    ``online``."""

    def __init__(self, model: nn.Module, ema_decay: float) -> None:
        super().__init__()
        self.online = model
        self.ema = exponential_moving_average(model, ema_decay, warmup=True)

    @property
    def model(self) -> nn.Module:
        """The EMA weights: validated, exported and sampled."""
        return self.ema.module

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """EMA update with diffusers' warm-up: decay min(ema_decay, (1 + n) / (10 + n)) at the n-th step."""
        self.ema.update_parameters(self.online)


class DenoisingPretraining(EMAPretraining):
    """Trains a :class:`DiffusersDiffusion`'s UNet by the DDPM loss with an exponential moving average
    (:class:`EMAPretraining`).

    Validation uses fixed noise and ``val_timesteps`` evenly spaced timesteps per image, so its loss is
    comparable between epochs. Class labels are fed to a class-conditional UNet.
    """

    def __init__(self, model: DiffusersDiffusion, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 200, ema_decay: float = 0.999, val_timesteps: int = 10) -> None:
        super().__init__(model, ema_decay)
        self.save_hyperparameters(ignore=["model"])

    def _labels(self, model: DiffusersDiffusion, labels: torch.Tensor) -> torch.Tensor | None:
        return labels if model.class_labels else None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        num_train = self.online.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train, (len(images),), device=images.device)
        loss = denoising_loss(self.online, images, timesteps, torch.randn_like(images), self._labels(self.online, labels))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def evaluate(self, batch, batch_idx: int, stage: str) -> None:
        images, labels = batch
        generator = torch.Generator().manual_seed(batch_idx)
        num_train = self.model.scheduler.config.num_train_timesteps
        n = self.hparams.val_timesteps
        losses = []
        for k in range(n):
            t = torch.full((len(images),), int((k + 0.5) * num_train / n), device=images.device)
            noise = torch.randn(images.shape, generator=generator).to(images.device)
            losses.append(denoising_loss(self.model, images, t, noise, self._labels(self.model, labels)))
        self.log(f"{stage}/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=len(images), sync_dist=True)


def flow_matching_loss(model: PixelFlow, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Conditional flow matching: mean squared error of the velocity at x_t = (1 - t) x_0 + t noise against
    noise - x_0 (t per image)."""
    t_images = t.view(-1, *([1] * (x0.dim() - 1)))
    return F.mse_loss(model.network(interpolate(x0, noise, t_images), t), noise - x0)


class FlowMatchingPretraining(EMAPretraining):
    """Trains a :class:`PixelFlow`'s velocity network by conditional flow matching (times uniform in (0, 1))
    with an exponential moving average (:class:`EMAPretraining`).

    Validation uses fixed noise and ``val_times`` evenly spaced times per image, so its loss is comparable
    between epochs.
    """

    def __init__(self, model: PixelFlow, lr: float = 2e-3, weight_decay: float = 0.0, warmup_steps: int = 200,
                 ema_decay: float = 0.999, val_times: int = 10) -> None:
        super().__init__(model, ema_decay)
        self.save_hyperparameters(ignore=["model"])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, _ = batch
        t = torch.rand(len(images), device=images.device)
        loss = flow_matching_loss(self.online, images, t, torch.randn_like(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def evaluate(self, batch, batch_idx: int, stage: str) -> None:
        images, _ = batch
        generator = torch.Generator().manual_seed(batch_idx)
        n = self.hparams.val_times
        losses = []
        for k in range(n):
            t = torch.full((len(images),), (k + 0.5) / n, device=images.device)
            noise = torch.randn(images.shape, generator=generator).to(images.device)
            losses.append(flow_matching_loss(self.model, images, t, noise))
        self.log(f"{stage}/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=len(images), sync_dist=True)


class ImageClassifierTraining(TrainingModule):
    """Trains a classifier (logits (B, num_classes)) on (image, label) by cross-entropy; reports accuracy."""

    def __init__(self, network: nn.Module, num_classes: int = 10, lr: float = 2e-3, weight_decay: float = 1e-2,
                 warmup_steps: int = 100) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        self.accuracy = nn.ModuleDict({stage: MulticlassAccuracy(num_classes, average="micro") for stage in ("val", "test")})

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self.network(images), labels)
        self.log("train/cross_entropy", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def evaluate(self, batch, batch_idx: int, stage: str) -> None:
        images, labels = batch
        logits = self.network(images)
        self.accuracy[stage].update(logits, labels)
        self.log(f"{stage}/cross_entropy", F.cross_entropy(logits, labels), batch_size=len(labels), sync_dist=True)
        self.log(f"{stage}/accuracy", self.accuracy[stage], prog_bar=True)
