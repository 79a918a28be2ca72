"""Masked diffusion over molecule strings (SMILES or SELFIES tokens) that decodes to molecules."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ...diffusion.masked import MaskedDiffusion
from ...diffusion.schedule import LogLinearSchedule
from .strings import Vocabulary


class MoleculeStringDiffusion(MaskedDiffusion):
    """A :class:`MaskedDiffusion` over a molecule :class:`Vocabulary`: samples are RDKit canonical SMILES,
    "" for a token string that is no molecule (the molecule rewards' invalid sample, as for GDSS).

    The sequence length is the vocabulary's ``max_length`` (molecules end in padding tokens); the
    alphabet is the vocabulary's one private-use character per token (see ``strings``). The checkpoint
    stores the vocabulary itself, so a model does not depend on the file it was built from.

    Args:
        backbone: the denoiser: tokens (B, L) (and noise levels) -> logits over the tokens and [MASK].
        vocabulary: a vocabulary JSON file (e.g. ``assets/molecules/moses_smiles_vocab.json``) or its contents.
        num_steps: sampling steps T.
        schedule: the noise schedule (default: MDLM's log-linear).
        time_conditioning: whether the backbone takes the noise level (MDLM: no).
    """

    def __init__(self, backbone: nn.Module, vocabulary: str | dict, num_steps: int = 128,
                 schedule: LogLinearSchedule | None = None, time_conditioning: bool = False) -> None:
        vocab = Vocabulary.load(vocabulary) if isinstance(vocabulary, str) else Vocabulary.from_dict(vocabulary)
        super().__init__(backbone, vocab.alphabet, vocab.max_length, num_steps, schedule, time_conditioning)
        self.vocabulary = vocab
        self._init_args["vocabulary"] = vocab.to_dict()
        self._check_backbone()

    def _check_backbone(self) -> None:
        """A one-line error when the backbone does not embed and predict the vocabulary's tokens and [MASK]."""
        want = len(self.vocabulary) + 1
        try:
            with torch.no_grad():
                width = self.backbone(torch.full((1, self.seq_len), self.mask_id), torch.zeros(1)).shape[-1]
        except IndexError:
            width = None
        if width != want:
            raise ValueError(f"backbone: it must embed and predict the vocabulary's {want - 1} tokens and [MASK] "
                             f"({want} symbols); set its vocab_size to fit (MDLMTransformer: {want}, "
                             f"DilatedConvDenoiser: {want - 1})")

    def encode(self, sequences: Sequence[str]) -> torch.Tensor:
        """SMILES strings -> padded token ids (N, seq_len), with a one-line error for a molecule that does not fit."""
        return self.vocabulary.encode(sequences).to(self._device())

    def decode(self, x0: torch.Tensor) -> list[str]:
        """Token rows -> canonical SMILES, "" for a row that is no molecule."""
        return [s or "" for s in self.vocabulary.decode(x0)]

    def sample_files(self):
        """A decoding run writes this model's samples as SMILES files and drawings of the best."""
        from .outputs import MoleculeFiles

        return MoleculeFiles()
