"""Per-sample seeds: sample i of stream m draws from a generator seeded by (seed, m, i) alone."""
from __future__ import annotations

import hashlib


def sample_seed(seed: int, method: str, index: int) -> int:
    """A 63-bit seed from (seed, method or stream name, sample index), independent of batching and ranks."""
    digest = hashlib.blake2b(f"{seed}:{method}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
