"""Sequence <-> token utilities shared by every sequence model, reward and dataset."""
from __future__ import annotations

from typing import Sequence

import torch


def tokenize(sequences: Sequence[str], alphabet: str) -> torch.Tensor:
    """Equal-length strings -> ids (N, L) over ``alphabet`` (case-insensitive); -1 marks other symbols."""
    if not sequences:
        return torch.empty((0, 0), dtype=torch.long)
    length = len(sequences[0])
    for i, seq in enumerate(sequences):
        if len(seq) != length:
            raise ValueError(f"sequence {i} has length {len(seq)}, expected {length} like the first one")
    table = torch.full((256,), -1, dtype=torch.long)
    for i, symbol in enumerate(alphabet):
        table[ord(symbol.upper())] = i
        table[ord(symbol.lower())] = i
    raw = torch.frombuffer(bytearray("".join(sequences).encode("ascii", "replace")), dtype=torch.uint8)
    return table[raw.long()].view(len(sequences), length)


def encode(sequences: Sequence[str], alphabet: str, kind: str = "sequences") -> torch.Tensor:
    """Like :func:`tokenize`, but a symbol outside ``alphabet`` is a one-line error naming it
    (``kind`` names the sequences in the message, e.g. "DNA sequences")."""
    tokens = tokenize(sequences, alphabet)
    bad = (tokens < 0).any(dim=1).nonzero()
    if len(bad):
        i = int(bad[0])
        symbol = next(c for c in sequences[i] if c.upper() not in alphabet.upper())
        raise ValueError(f"sequence {i} has symbol {symbol!r}; {kind} must use only {', '.join(alphabet)}")
    return tokens
