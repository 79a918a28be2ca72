"""svdd-lightning: reward-guided decoding of diffusion models with soft value-based decoding (SVDD)."""
from .core.decoders import DPS, SMC, SVDD, BestOfN, DecodeResult, Decoder, PretrainedSampling
from .core.model import DiffusionModel
from .core.reward import ProxyGuided, Reward, WeightedSum, as_reward
from .core.run import DecodeStats
from .core.value import NetworkValue, PosteriorMeanValue, Value

__all__ = ["BestOfN", "DPS", "DecodeResult", "DecodeStats", "Decoder", "DiffusionModel", "NetworkValue",
           "PosteriorMeanValue", "PretrainedSampling", "ProxyGuided", "Reward", "SMC", "SVDD", "Value", "WeightedSum", "as_reward"]
