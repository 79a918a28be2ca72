"""Training the sequence models: the masked diffusion model by its NELBO, and sequence classifiers (oracles)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import BinaryAUROC

from ...diffusion.masked import MaskedDiffusion
from ...lightning.training import TrainingModule


class MaskedDiffusionPretraining(TrainingModule):
    """Trains a :class:`MaskedDiffusion` by its continuous-time NELBO (MDLM), logged in bits/token."""

    def __init__(self, model: MaskedDiffusion, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 200, val_times: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model

    def _bits_per_token(self, tokens: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        return self.model.nelbo(tokens, t, generator).mean() / (tokens.shape[1] * math.log(2))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        tokens, _ = batch
        loss = self._bits_per_token(tokens, self.model.schedule.sample_times(tokens.shape[0]).to(tokens.device))
        self.log("train/nelbo_bpt", loss, prog_bar=True)
        return loss

    def evaluate(self, batch, batch_idx: int, stage: str) -> None:
        tokens, _ = batch
        generator = torch.Generator().manual_seed(0)
        n = self.hparams.val_times
        times = (torch.arange(n) + 0.5) / n
        bpt = torch.stack([self._bits_per_token(tokens, t.expand(tokens.shape[0]).to(tokens.device), generator)
                           for t in times]).mean()
        self.log(f"{stage}/nelbo_bpt", bpt, prog_bar=True, batch_size=tokens.shape[0], sync_dist=True)


class SequenceClassifierTraining(TrainingModule):
    """Trains a one-logit network on (tokens, label) with BCE; reports AUROC on validation and test."""

    def __init__(self, network: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-2,
                 warmup_steps: int = 100) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        self.val_auroc = BinaryAUROC()
        self.test_auroc = BinaryAUROC()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        tokens, labels = batch
        loss = F.binary_cross_entropy_with_logits(self.network(tokens), labels)
        self.log("train/bce", loss, prog_bar=True)
        return loss

    def evaluate(self, batch, batch_idx: int, stage: str) -> None:
        tokens, labels = batch
        logits = self.network(tokens)
        metric = self.val_auroc if stage == "val" else self.test_auroc
        metric.update(logits, labels.long())
        self.log(f"{stage}/bce", F.binary_cross_entropy_with_logits(logits, labels), batch_size=len(labels),
                 sync_dist=True)
        self.log(f"{stage}/auroc", metric, prog_bar=True)
