"""Sequence <-> token utilities shared by every sequence model, reward and dataset."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def tokenize(sequences: Sequence[str], alphabet: str) -> torch.Tensor:
    """Equal-length strings -> ids (N, L) over ``alphabet`` (case-insensitive); -1 marks other symbols.

    T and U are one base: over an alphabet with one of them, the other reads as it too (RNA
    sequences score with a DNA oracle, DNA inputs feed an RNA model).
    """
    if not sequences:
        return torch.empty((0, 0), dtype=torch.long)
    length = len(sequences[0])
    for i, seq in enumerate(sequences):
        if len(seq) != length:
            raise ValueError(f"sequence {i} has length {len(seq)}, expected {length} like the first one")
    table = torch.full((256,), -1, dtype=torch.long)
    for i, symbol in enumerate(alphabet):
        for alias in {"T": "TU", "U": "UT"}.get(symbol.upper(), symbol.upper()):
            if alias not in alphabet.upper() or alias == symbol.upper():
                table[ord(alias)] = table[ord(alias.lower())] = i
    raw = torch.frombuffer(bytearray("".join(sequences).encode("ascii", "replace")), dtype=torch.uint8)
    return table[raw.long()].view(len(sequences), length)


def encode(sequences: Sequence[str], alphabet: str, kind: str = "sequences") -> torch.Tensor:
    """Like :func:`tokenize`, but a symbol outside ``alphabet`` is a one-line error naming it
    (``kind`` names the sequences in the message, e.g. "DNA sequences")."""
    tokens = tokenize(sequences, alphabet)
    bad = (tokens < 0).any(dim=1).nonzero()
    if len(bad):
        i = int(bad[0])
        symbol = sequences[i][int((tokens[i] < 0).nonzero()[0])]
        raise ValueError(f"sequence {i} has symbol {symbol!r}; {kind} must use only {', '.join(alphabet)}")
    return tokens


def one_hot(x: torch.Tensor, num_symbols: int = 4) -> torch.Tensor:
    """Tokens (N, L) -> one-hot (N, num_symbols, L) for convolutions; a float (N, L, C) relaxation
    (probabilities, for gradient guidance) is only transposed."""
    if x.dtype == torch.long:
        return F.one_hot(x, num_symbols).float().transpose(1, 2)
    return x.float().transpose(1, 2)
