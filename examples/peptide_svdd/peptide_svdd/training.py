"""Pretraining the peptide model with ``train.py fit`` (the LightningModule the config names)."""
from __future__ import annotations

import lightning as L
import torch

from .model import PeptideDiffusion


class PeptidePretraining(L.LightningModule):
    """Trains a :class:`PeptideDiffusion` by its NELBO; validation uses fixed masks, so its loss is
    comparable between epochs. ``model`` is what svdd-lightning's ``ExportBest`` writes.

    Args:
        model: the model to train.
        lr: AdamW's learning rate.
    """

    def __init__(self, model: PeptideDiffusion, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch[0])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self.model.loss(batch[0], torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr)
