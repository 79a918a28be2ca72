"""Molecules as token strings: SMILES and SELFIES tokenisation and a fixed-length vocabulary.

SMILES are split by the regular expression of Schwaller et al. (2019, "Molecular Transformer"), SELFIES
by the ``selfies`` library (one token per bracketed symbol). A :class:`Vocabulary` holds the tokens of a
corpus plus a padding token that fills every encoded molecule to ``max_length`` tokens; it is stored as
JSON with the corpus statistics (``assets/molecules/moses_*_vocab.json`` for MOSES).

Tokens are several characters long ("Cl", "[nH]", "%10", "[=C]"), while :class:`MaskedDiffusion` names
its symbols by the characters of an ``alphabet`` string. A vocabulary therefore gives each token one
character of Unicode's private use area (:attr:`Vocabulary.alphabet`): the masked diffusion stack runs
unchanged on token ids, and only the string model over molecules
(:class:`~svdd_lightning.domains.molecules.string_diffusion.MoleculeStringDiffusion`) reads and writes
molecules through the vocabulary. The DNA and 5'UTR models, their byte-level encoding and their
checkpoints are untouched.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import selfies
import torch
from rdkit import Chem, rdBase

from ...paths import find

REPRESENTATIONS = ("smiles", "selfies")
PADDING = "<pad>"
#: the SMILES token pattern of Schwaller et al. (2019)
SMILES_PATTERN = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|\%[0-9]{2}|[0-9])")
#: the first character of Unicode's private use area: token i is chr(PRIVATE_USE + i) in an alphabet
PRIVATE_USE = 0xE000
PERCENTILES = (50, 90, 95, 99, 99.9, 100)


def smiles_tokens(smiles: str) -> list[str]:
    """The SMILES tokens of a string; a one-line error when the tokens do not spell it back."""
    tokens = SMILES_PATTERN.findall(smiles)
    if "".join(tokens) != smiles:
        raise ValueError(f"SMILES {smiles!r} has characters outside the SMILES token pattern")
    return tokens


def selfies_tokens(smiles: str) -> list[str]:
    """The SELFIES tokens of a SMILES string (``selfies.encoder``, then ``selfies.split_selfies``)."""
    try:
        return list(selfies.split_selfies(selfies.encoder(smiles)))
    except selfies.EncoderError as err:
        raise ValueError(f"SMILES {smiles!r} has no SELFIES: {err}") from None


def tokenize(smiles: str, representation: str) -> list[str]:
    """The tokens of a SMILES string in ``representation`` (smiles or selfies)."""
    return smiles_tokens(smiles) if check_representation(representation) == "smiles" else selfies_tokens(smiles)


def to_canonical(text: str, representation: str) -> str | None:
    """RDKit canonical SMILES of a SMILES or SELFIES string, None when it is empty or does not parse."""
    if check_representation(representation) == "selfies":
        try:
            text = selfies.decoder(text)
        except selfies.DecoderError:
            return None
    if not text:
        return None
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(text)
    return None if mol is None else Chem.MolToSmiles(mol)


def check_representation(representation: str) -> str:
    """``representation`` when it is smiles or selfies, else a one-line error."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {', '.join(REPRESENTATIONS)}, got {representation!r}")
    return representation


class Vocabulary:
    """The tokens of a corpus (id 0 is the padding token) and the fixed length of an encoded molecule.

    Args:
        tokens: the tokens, padding first.
        max_length: tokens per encoded molecule (molecules are padded to it).
        representation: smiles or selfies.
        statistics: corpus statistics stored with the vocabulary (token counts, length percentiles).
    """

    def __init__(self, tokens: Sequence[str], max_length: int, representation: str = "smiles",
                 statistics: dict | None = None) -> None:
        if not tokens or tokens[0] != PADDING or len(set(tokens)) != len(tokens):
            raise ValueError(f"Vocabulary.tokens must be distinct with the padding token {PADDING!r} first")
        if max_length < 1:
            raise ValueError(f"Vocabulary.max_length must be >= 1, got {max_length}")
        self.tokens, self.max_length = list(tokens), max_length
        self.representation = check_representation(representation)
        self.statistics = statistics or {}
        self.ids = {token: i for i, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def alphabet(self) -> str:
        """One private-use character per token, in id order: the ``alphabet`` of a masked diffusion model."""
        return "".join(chr(PRIVATE_USE + i) for i in range(len(self.tokens)))

    @classmethod
    def build(cls, smiles: Iterable[str], representation: str = "smiles") -> "Vocabulary":
        """The vocabulary of a corpus, with max_length its longest molecule and the statistics recorded."""
        counts: Counter[str] = Counter()
        lengths = []
        for s in smiles:
            tokens = tokenize(s, representation)
            counts.update(tokens)
            lengths.append(len(tokens))
        if not lengths:
            raise ValueError("Vocabulary.build: the corpus has no molecules")
        statistics = {
            "molecules": len(lengths),
            "num_tokens": len(counts) + 1,
            "length_percentiles": {str(p): float(np.percentile(lengths, p)) for p in PERCENTILES},
            "mean_length": float(np.mean(lengths)),
            "token_counts": dict(counts.most_common()),
        }
        return cls([PADDING, *sorted(counts)], max(lengths), representation, statistics)

    def to_dict(self) -> dict:
        return {"representation": self.representation, "max_length": self.max_length, "tokens": self.tokens,
                "statistics": self.statistics}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        missing = [k for k in ("representation", "max_length", "tokens") if k not in data]
        if missing:
            raise ValueError(f"vocabulary: lacks the fields {missing}; build one with Vocabulary.build")
        return cls(data["tokens"], data["max_length"], data["representation"], data.get("statistics"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """A vocabulary JSON file (a shipped asset path works from any directory)."""
        found = find(path)
        if not found.is_file():
            raise FileNotFoundError(f"vocabulary: no file at {path}; build one with Vocabulary.build(...).save(path)")
        return cls.from_dict(json.loads(found.read_text()))

    def encode(self, smiles: Sequence[str]) -> torch.Tensor:
        """SMILES strings -> token ids (N, max_length), padded; a one-line error names a molecule that does
        not fit (an unknown token or too many tokens)."""
        out = torch.zeros((len(smiles), self.max_length), dtype=torch.long)
        for i, s in enumerate(smiles):
            tokens = tokenize(s, self.representation)
            unknown = [t for t in tokens if t not in self.ids]
            if unknown:
                raise ValueError(f"molecule {i} ({s}) has tokens {unknown} outside the vocabulary; rebuild the "
                                 f"vocabulary on a corpus holding them")
            if len(tokens) > self.max_length:
                raise ValueError(f"molecule {i} ({s}) has {len(tokens)} tokens, more than the vocabulary's "
                                 f"max_length {self.max_length}")
            out[i, : len(tokens)] = torch.tensor([self.ids[t] for t in tokens], dtype=torch.long)
        return out

    def strings(self, ids: torch.Tensor) -> list[str | None]:
        """Token rows -> SMILES or SELFIES strings, padding removed; None for a row holding an id outside the
        vocabulary (a position still masked)."""
        size = len(self.tokens)
        return [None if any(i >= size for i in row) else "".join(self.tokens[i] for i in row if i)
                for row in ids.tolist()]

    def decode(self, ids: torch.Tensor) -> list[str | None]:
        """Token rows -> RDKit canonical SMILES, None for a row that is no molecule."""
        return [None if s is None else to_canonical(s, self.representation) for s in self.strings(ids)]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m svdd_lightning.domains.molecules.strings CSV REPRESENTATION OUT``: build and save a vocabulary
    from the SMILES column of a CSV (how ``assets/molecules/moses_*_vocab.json`` were made)."""
    import argparse

    from .data import read_smiles

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("csv")
    parser.add_argument("representation", choices=REPRESENTATIONS)
    parser.add_argument("out")
    args = parser.parse_args(argv)
    Vocabulary.build(read_smiles(args.csv), args.representation).save(args.out)


if __name__ == "__main__":
    main()
