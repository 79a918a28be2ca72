"""Sequence metrics: k-mer statistics against reference sequences (as in the DRAKES enhancer
benchmark, Wang et al. 2024) and per-sequence composition. DNA and RNA alike (U counts as T)."""
from __future__ import annotations

import itertools

import torch

from ...core.reward import Reward
from ...sample_files import read_fasta

ALPHABET = "ACGT"


def kmer_frequencies(sequences: list[str], k: int = 3) -> torch.Tensor:
    """Counts of every k-mer over ACGT (4^k,), summed over the sequences; U reads as T, k-mers with
    other symbols are skipped."""
    index = {"".join(p): i for i, p in enumerate(itertools.product(ALPHABET, repeat=k))}
    counts = torch.zeros(len(index), dtype=torch.float64)
    for seq in sequences:
        seq = seq.upper().replace("U", "T")
        for i in range(len(seq) - k + 1):
            j = index.get(seq[i: i + k])
            if j is not None:
                counts[j] += 1
    return counts


def kmer_correlation(designs: list[str], reference: list[str], k: int = 3) -> float:
    """Pearson correlation of the k-mer frequencies of two sets of sequences."""
    return pearson(kmer_frequencies(designs, k), kmer_frequencies(reference, k))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two k-mer count vectors."""
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


class KmerCorrelation:
    """Pearson correlation of k-mer frequencies of designs with those of reference sequences."""

    def __init__(self, reference: str, k: int = 3, name: str | None = None) -> None:
        self.k = k
        self.reference = kmer_frequencies(read_fasta(reference), k)
        self.name = name or f"{k}mer_pearson"

    def __call__(self, sequences: list[str]) -> float:
        return pearson(kmer_frequencies(sequences, self.k), self.reference)


class GCContent(Reward):
    """Fraction of G and C among a sequence's bases (a per-sample evaluation column)."""

    name = "gc_content"
    unit = "fraction"

    def __call__(self, sequences: list[str]) -> list[float]:
        return [sum(c in "GCgc" for c in seq) / max(len(seq), 1) for seq in sequences]
