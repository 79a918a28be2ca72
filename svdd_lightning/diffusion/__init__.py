"""Diffusion models that plug into the core: masked discrete diffusion (MDLM-style)."""
from .backbones import DilatedConvDenoiser
from .masked import MaskedDiffusion
from .schedule import LogLinearSchedule

__all__ = ["DilatedConvDenoiser", "LogLinearSchedule", "MaskedDiffusion"]
