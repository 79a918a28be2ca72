"""5'UTR rewards and per-design evaluation columns.

- :class:`MinimumFreeEnergy`: stability, the negated minimum free energy of the sequence's
  secondary structure from ViennaRNA (a physics model; non-differentiable).
- :class:`UpstreamAUGs`: the number of upstream AUG start codons in a 5'UTR (each one lowers
  translation of the main reading frame).
The MRL reward is an :class:`svdd_lightning.domains.sequences.oracle.OracleReward` on the ConvGRU oracle.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

from ...core.reward import Reward
from ...core.workers import ChunkedWorkers
from ...extras import require


def _fold_energy(sequence: str, temperature: float) -> float:
    """ViennaRNA's MFE (kcal/mol) of an RNA or DNA string (T read as U); NaN for other symbols."""
    import RNA

    sequence = sequence.upper().replace("T", "U")
    if not sequence or set(sequence) - set("ACGU"):
        return math.nan
    model = RNA.md()
    model.temperature = temperature
    _, energy = RNA.fold_compound(sequence, model).mfe()
    return float(energy)


def _fold_chunk(sequences: Sequence[str], temperature: float) -> list[float]:
    return [_fold_energy(s, temperature) for s in sequences]


class MinimumFreeEnergy(Reward):
    """Stability reward: -MFE, in kcal/mol (ViennaRNA 2, Turner 2004 parameters, ``temperature`` °C).

    The sign makes a more stable structure score higher; an unfolded sequence scores 0 and 50-nt
    human 5'UTRs score 0 to about 30. ``per_nucleotide`` divides by the length (kcal/mol per nt),
    to compare lengths. ``processes`` > 1 folds in a pool of worker processes (about 1 ms per 50-nt
    sequence on one core). Symbols outside ACGU/ACGT score NaN (the run floors them).

    Args:
        temperature: folding temperature in °C.
        per_nucleotide: divide by the sequence length (kcal/mol per nt).
        processes: worker processes that fold in parallel (1: in this process).
    """

    name = "stability"
    unit = "-MFE, kcal/mol"

    def __init__(self, temperature: float = 37.0, per_nucleotide: bool = False, processes: int = 1) -> None:
        require("RNA", extra="rna", feature="MinimumFreeEnergy")
        self.temperature, self.per_nucleotide = temperature, per_nucleotide
        self.workers = ChunkedWorkers(processes, min_chunk=16, owner="MinimumFreeEnergy")

    def energies(self, sequences: Sequence[str]) -> list[float]:
        """MFE of each sequence in kcal/mol (negative: more negative is more stable)."""
        return self.workers.map(partial(_fold_chunk, temperature=self.temperature), sequences)

    def __call__(self, sequences: Sequence[str]) -> list[float]:
        return self.submit(sequences)()

    def submit(self, sequences: Sequence[str]) -> Callable[[], list[float]]:
        """Start folding in the worker processes (with ``processes`` > 1) and return at once; the returned
        callable waits for the rewards (decoding overlaps folding with the denoiser's work)."""
        sequences = list(sequences)
        pending = self.workers.submit(partial(_fold_chunk, temperature=self.temperature), sequences)
        return lambda: [-e / (len(s) if self.per_nucleotide else 1) for s, e in zip(sequences, pending())]

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        self.workers.close()


class UpstreamAUGs(Reward):
    """Count of AUG (or ATG) triplets in each 5'UTR, overlapping occurrences included."""

    name = "upstream_augs"
    unit = "count"

    def __call__(self, sequences: Sequence[str]) -> list[float]:
        counts = []
        for seq in sequences:
            seq = seq.upper().replace("T", "U")
            counts.append(float(sum(seq.startswith("AUG", i) for i in range(len(seq) - 2))))
        return counts
