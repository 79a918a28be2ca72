"""svdd-lightning: reward-guided decoding of diffusion models with soft value-based decoding (SVDD)."""
from .checkpoints import Configurable
from .core.decoders import DPS, SMC, SVDD, BestOfN, DecodeResult, Decoder, PretrainedSampling
from .core.model import DiffusionModel
from .core.reward import FunctionReward, ProxyGuided, Reward, WeightedSum
from .core.run import Candidates, DecodeStats
from .core.value import NetworkValue, PosteriorMeanValue, Value
from .core.beam import BeamSearch
from .core.nested_is import NestedIS
from .core.refinement import Refinement
from .core.rollout_values import LookaheadValue, PosteriorSamplingValue

__all__ = ["BeamSearch", "BestOfN", "Candidates", "Configurable", "DPS", "DecodeResult", "DecodeStats", "Decoder",
           "DiffusionModel", "FunctionReward", "LookaheadValue", "NestedIS", "NetworkValue", "PosteriorMeanValue",
           "PosteriorSamplingValue", "PretrainedSampling", "ProxyGuided", "Refinement", "Reward", "SMC",
           "SVDD", "Value", "WeightedSum"]


def __getattr__(name: str):
    from .renamed import module_getattr

    return module_getattr(__name__, name)
