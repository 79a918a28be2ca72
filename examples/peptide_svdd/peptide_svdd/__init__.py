"""A domain of one's own for svdd-lightning: peptides from a masked diffusion model.

Everything here lives outside ``svdd_lightning`` and plugs into it through its interfaces:
:class:`PeptideDiffusion` implements :class:`svdd_lightning.DiffusionModel`, :class:`NetCharge` is a
reward, :class:`PeptideValueNet` a value network for SVDD-MC, :class:`PeptidePretraining` and
:class:`PeptideDataModule` train the model with ``train.py fit``.
"""
from .data import AMINO_ACIDS, MarkovPeptides, PeptideDataModule
from .model import PeptideDenoiser, PeptideDiffusion
from .reward import MarkovLogLikelihood, NetCharge
from .training import PeptidePretraining
from .value import PeptideValueNet

__all__ = ["AMINO_ACIDS", "MarkovLogLikelihood", "MarkovPeptides", "NetCharge", "PeptideDataModule", "PeptideDenoiser",
           "PeptideDiffusion", "PeptidePretraining", "PeptideValueNet"]
