"""Diffusion models that plug into the core: masked discrete diffusion (MDLM-style) and rectified flows."""
from .backbones import DilatedConvDenoiser
from .dit import MDLMTransformer
from .flow import RectifiedFlow
from .masked import MaskedDiffusion
from .mdlm_checkpoint import load_mdlm_checkpoint
from .schedule import LogLinearSchedule

__all__ = ["DilatedConvDenoiser", "LogLinearSchedule", "MDLMTransformer", "MaskedDiffusion", "RectifiedFlow",
           "load_mdlm_checkpoint"]
