"""svdd-lightning: reward-guided decoding of diffusion models with soft value-based decoding (SVDD)."""
from .checkpoints import Configurable
from .core.decoders import DPS, SMC, SVDD, BestOfN, DecodeResult, Decoder, PretrainedSampling
from .core.model import DiffusionModel
from .core.reward import FunctionReward, ProxyGuided, Reward, RewardFunction, WeightedSum, as_reward
from .core.run import Candidates, DecodeStats
from .core.value import NetworkValue, PosteriorMeanValue, Value

__all__ = ["BestOfN", "Candidates", "Configurable", "DPS", "DecodeResult", "DecodeStats", "Decoder", "DiffusionModel",
           "FunctionReward", "NetworkValue", "PosteriorMeanValue", "PretrainedSampling", "ProxyGuided", "Reward",
           "RewardFunction", "SMC", "SVDD", "Value", "WeightedSum", "as_reward"]
