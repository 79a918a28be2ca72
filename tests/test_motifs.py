"""Tests for the JASPAR motif reward (svdd_lightning.domains.dna.motifs)."""
from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest

from svdd_lightning.core.reward import GuardedReward
from svdd_lightning.domains.dna.motifs import JasparMotifReward

COMP = str.maketrans("ACGT", "TGCA")
CONSENSUS = "GTTACCAGGA"  # synthetic, non-palindromic; little overlap with shifts of itself or its revcomp


def revcomp(s: str) -> str:
    return s.translate(COMP)[::-1]


def pfm_for(consensus: str, strong: float = 90.0, weak: float = 10.0 / 3) -> np.ndarray:
    """A 4 x W count matrix strongly favouring `consensus`."""
    counts = np.full((4, len(consensus)), weak)
    for j, b in enumerate(consensus):
        counts["ACGT".index(b), j] = strong
    return counts


def random_dna(n: int, rng: random.Random) -> str:
    return "".join(rng.choice("ACGT") for _ in range(n))


def plant(seq: str, motif: str, pos: int) -> str:
    return seq[:pos] + motif + seq[pos + len(motif):]


@pytest.fixture
def rng() -> random.Random:
    return random.Random(0)


@pytest.fixture
def synthetic() -> JasparMotifReward:
    return JasparMotifReward.from_pfm({"synth": pfm_for(CONSENSUS)})


def test_planted_consensus_scores_one(synthetic, rng):
    background = [random_dna(200, rng) for _ in range(20)]
    base = synthetic(background)
    assert all(0.0 <= v < 1.0 for v in base)
    planted = [plant(s, CONSENSUS, 57) for s in background]
    assert synthetic(planted) == pytest.approx([1.0] * 20, abs=1e-6)
    # at the very start and very end of the sequence too, in lower case as well
    edge = [CONSENSUS + background[0][10:], background[1][:190] + CONSENSUS, plant(background[2], CONSENSUS.lower(), 3)]
    assert synthetic(edge) == pytest.approx([1.0] * 3, abs=1e-6)


def test_reverse_complement_is_found(synthetic, rng):
    rc = revcomp(CONSENSUS)
    assert rc != CONSENSUS
    seqs = [plant(random_dna(200, rng), rc, p) for p in (0, 88, 190)]
    assert synthetic(seqs) == pytest.approx([1.0] * 3, abs=1e-6)


def test_count_mode_counts_planted_copies(rng):
    reward = JasparMotifReward.from_pfm({"synth": pfm_for(CONSENSUS)}, aggregate="count", threshold=0.85)
    base = random_dna(200, rng)
    # choose a background with no chance hits so counts are exact
    while reward([base])[0] != 0.0:
        base = random_dna(200, rng)
    one = plant(base, CONSENSUS, 20)
    three = plant(plant(one, CONSENSUS, 90), revcomp(CONSENSUS), 150)
    assert reward([base, one, three]) == [0.0, 1.0, 3.0]


def test_multiple_motifs_mean_and_sum(rng):
    other = "AATTGGCCAT"
    mats = {"a": pfm_for(CONSENSUS), "b": pfm_for(other)}
    seq = plant(plant(random_dna(200, rng), CONSENSUS, 10), other, 100)
    mx = JasparMotifReward.from_pfm(mats)
    per = mx.motif_scores([seq])
    assert per.shape == (1, 2)
    assert per[0] == pytest.approx([1.0, 1.0])
    assert mx([seq])[0] == pytest.approx(1.0)
    cnt = JasparMotifReward.from_pfm(mats, aggregate="count", threshold=0.99)
    assert cnt([seq])[0] == 2.0


def naive_scores(counts: np.ndarray, seq: str, pseudocount: float, threshold: float) -> tuple[float, int]:
    """Reference: loop over every window and strand in plain Python."""
    probs = (counts + pseudocount * 0.25) / (counts.sum(axis=0, keepdims=True) + pseudocount)
    lo = np.log2(probs / 0.25)
    lo_min, lo_max = lo.min(axis=0).sum(), lo.max(axis=0).sum()
    w = lo.shape[1]
    best, hits = 0.0, 0
    for p in range(len(seq) - w + 1):
        strand_scores = []
        for window in (seq[p:p + w].upper(), revcomp(seq[p:p + w].upper())):
            raw = sum(lo["ACGT".index(b), j] for j, b in enumerate(window))
            strand_scores.append((raw - lo_min) / (lo_max - lo_min))
        best = max(best, *strand_scores)
        hits += max(strand_scores) >= threshold
    return best, hits


def test_matches_naive_reference(rng):
    nrng = np.random.default_rng(3)
    mats = {"w6": nrng.integers(0, 50, (4, 6)).astype(float), "w11": nrng.integers(0, 50, (4, 11)).astype(float)}
    seqs = [random_dna(n, rng) for n in (200, 37, 11, 8, 5, 120)]
    mx = JasparMotifReward.from_pfm(mats, pseudocount=0.8)
    cnt = JasparMotifReward.from_pfm(mats, pseudocount=0.8, aggregate="count", threshold=0.6)
    got_max, got_cnt = mx.motif_scores(seqs), cnt.motif_scores(seqs)
    for i, seq in enumerate(seqs):
        for k, counts in enumerate(mats.values()):
            best, hits = naive_scores(counts, seq, 0.8, 0.6)
            assert got_max[i, k] == pytest.approx(best, abs=1e-5)
            assert got_cnt[i, k] == hits
    assert got_cnt.sum() > 0


def test_invalid_sequence_is_nan_only_for_that_sample(synthetic, rng):
    good = plant(random_dna(200, rng), CONSENSUS, 30)
    bad = good[:100] + "N" + good[101:]
    out = synthetic([good, bad, good.lower(), "", "ACGU" * 50])
    assert out[0] == pytest.approx(1.0)
    assert out[2] == pytest.approx(1.0)
    assert math.isnan(out[1]) and math.isnan(out[3]) and math.isnan(out[4])
    wrapped = GuardedReward(synthetic, floor=-1.0)
    scores = wrapped.evaluate([good, bad])
    assert scores.values.tolist() == pytest.approx([1.0, -1.0])
    assert scores.failures == 1


def test_short_sequence_and_empty_batch(synthetic):
    assert synthetic([]) == []
    assert synthetic(["ACGT"]) == [0.0]  # shorter than the motif: no window, no match


def test_bad_arguments():
    with pytest.raises(ValueError):
        JasparMotifReward.from_pfm({"x": np.ones((3, 5))})
    with pytest.raises(ValueError):
        JasparMotifReward.from_pfm({"x": np.ones((4, 5))}, aggregate="mean")


# ---- the real JASPAR database -------------------------------------------------------------

def test_jaspar_liver_motifs_load():
    pytest.importorskip("pyjaspar")
    reward = JasparMotifReward()
    assert reward.name == "jaspar_liver_motifs"
    assert reward.motif_ids == ["MA0114.5", "MA0046.3", "MA0102.5", "MA0047.4"]
    assert [n.upper() for n in reward.motif_names] == ["HNF4A", "HNF1A", "CEBPA", "FOXA2"]
    assert all(w >= 6 for w in reward.widths)


def test_unknown_motif_id_raises():
    pytest.importorskip("pyjaspar")
    with pytest.raises(ValueError, match=r"MA9999\.9.*JASPAR2024"):
        JasparMotifReward(["MA0114.5", "MA9999.9"])


def test_hnf4a_consensus_beats_shuffled(rng):
    pytest.importorskip("pyjaspar")
    hnf4a = JasparMotifReward(["MA0114.5"])
    counts = np.asarray(hnf4a.pwms[0])
    consensus = "".join("ACGT"[i] for i in counts.argmax(axis=0))
    seq = plant(random_dna(200, rng), consensus, 80)
    chars = list(seq)
    rng.shuffle(chars)
    shuffled = "".join(chars)
    s_planted, s_shuffled = hnf4a([seq, shuffled])
    assert s_planted == pytest.approx(1.0)
    assert s_planted > s_shuffled
    full = JasparMotifReward()
    per = full.motif_scores([seq, shuffled])  # column 0 is HNF4A
    assert per[0, 0] == pytest.approx(1.0) and per[0, 0] > per[1, 0]


def test_speed_1000_by_200(rng):
    pytest.importorskip("pyjaspar")
    reward = JasparMotifReward()
    seqs = [random_dna(200, rng) for _ in range(1000)]
    reward(seqs[:10])  # warm up
    t0 = time.perf_counter()
    out = reward(seqs)
    elapsed = time.perf_counter() - t0
    assert len(out) == 1000 and all(0.0 <= v <= 1.0 for v in out)
    assert elapsed < 5.0, f"scoring 1000 x 200 bp took {elapsed:.2f} s"
