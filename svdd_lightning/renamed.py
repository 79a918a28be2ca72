"""Names that moved: an old class path in a config, a checkpoint or an import gets one line naming the new one."""
from __future__ import annotations

import re
from typing import Iterable

#: old dotted name -> new dotted name
RENAMED: dict[str, str] = {
    "svdd_lightning.RewardFunction": "svdd_lightning.Reward",
    "svdd_lightning.core.reward.RewardFunction": "svdd_lightning.core.reward.Reward",
    "svdd_lightning.as_reward": "svdd_lightning.core.reward.guard",
    "svdd_lightning.core.reward.as_reward": "svdd_lightning.core.reward.guard",
    "svdd_lightning.oracle_reward.OracleReward": "svdd_lightning.domains.sequences.oracle.OracleReward",
    **{f"svdd_lightning.sequence_metrics.{name}": f"svdd_lightning.domains.sequences.metrics.{name}"
       for name in ("KmerCorrelation", "GCContent", "kmer_frequencies", "kmer_correlation", "pearson")},
    "svdd_lightning.sequence_metrics.read_fasta": "svdd_lightning.sample_files.read_fasta",
    **{f"svdd_lightning.sequences.{name}": f"svdd_lightning.diffusion.tokens.{name}"
       for name in ("tokenize", "encode", "one_hot")},
    **{f"svdd_lightning.lightning.training.{name}": f"svdd_lightning.domains.sequences.training.{name}"
       for name in ("MaskedDiffusionPretraining", "SequenceClassifierTraining")},
    "svdd_lightning.lightning.training.SequenceRegressorTraining": "svdd_lightning.lightning.training.RegressorTraining",
    "svdd_lightning.lightning.finetuning.FineTuningObjective": "svdd_lightning.core.objective.FineTuningObjective",
    "svdd_lightning.lightning.finetuning.MaskedDiffusionObjective": "svdd_lightning.diffusion.masked.MaskedDiffusionObjective",
}
_DOTTED = re.compile(r"svdd_lightning(?:\.\w+)+")


def message(old: str) -> str:
    """The one line for a moved name."""
    return f"{old} is now {RENAMED[old]}: use the new name"


def refuse_renamed(texts: Iterable[tuple[str, str]]) -> None:
    """Raise ``ValueError`` (one line) for the first moved name in ``(where, text)`` pairs (config files,
    command-line values)."""
    for where, text in texts:
        for name in _DOTTED.findall(text):
            if name in RENAMED:
                raise ValueError(f"{where}: {message(name)}")


def module_getattr(module: str, name: str):
    """For a module's ``__getattr__``: an ImportError naming the new name of a moved one."""
    old = f"{module}.{name}"
    if old in RENAMED:
        raise ImportError(message(old))
    raise AttributeError(f"module {module!r} has no attribute {name!r}")
