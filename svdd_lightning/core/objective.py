"""What fine-tuning on guided samples needs from a model family: its pretraining loss and its divergence
from a reference model, per sample. A model supplies its own (:meth:`DiffusionModel.finetuning_objective`)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from .model import DiffusionModel


class FineTuningObjective(ABC):
    """A model family's pretraining loss per sample and its divergence from a reference model.

    Both return one value per row of the clean states ``x0``; ``kl`` is None without a reference.
    """

    @abstractmethod
    def training_losses(self, model: DiffusionModel, x0: Any, reference: DiffusionModel | None = None
                        ) -> tuple[Tensor, Tensor | None]:
        """(loss, kl) per row at random noise levels, as pretraining draws them."""

    @abstractmethod
    def validation_losses(self, model: DiffusionModel, x0: Any, reference: DiffusionModel | None = None
                          ) -> tuple[Tensor, Tensor | None]:
        """(loss, kl) per row at fixed noise levels and noise, comparable between validations."""

    def clean_states(self, batch: Any) -> Any:
        """The clean states of a batch of the family's pretraining data (default: its first field)."""
        return batch[0] if isinstance(batch, (tuple, list)) else batch
