"""Decoding under DDP on CPU (2 processes, gloo): every requested sample is written exactly once,
with the same sequences as a 1-process run, and a DDP run resumes where an earlier one stopped.

``decode.py`` has a ``__main__`` guard, so ``--trainer.strategy ddp`` relaunches the script itself
for rank 1. Lightning's predict sampler (``UnrepeatedDistributedSampler``) strides the indices by
rank without padding: with 7 samples on 2 ranks, rank 0 decodes 0, 2, 4, 6 and rank 1 decodes
1, 3, 5 (uneven batch counts are fine in predict). The DDP runs launch the script; the 1-process runs
run its entry point in this process (``run_main``), sparing an interpreter start-up.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tiny_dna import LENGTH, METHODS, build_tiny_checkpoints, read_samples, run_cli, run_main
from tiny_dna import decode_args as _decode_args

DDP = ("--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu")
ONE = ("--trainer.devices", "1", "--trainer.accelerator", "cpu")


def run_decode(*args: str):
    return run_cli("decode.py", *args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_checkpoints(tmp_path_factory.mktemp("ddp_ckpt"))


def decode_args(paths: dict[str, Path], out: Path, num_samples: int, *extra: str) -> list[str]:
    return _decode_args(paths, out, "--data.num_samples", str(num_samples), "--data.batch_size", "2", *extra)


samples = read_samples


def part_indices(path: Path, method: str = "pretrained") -> list[list[int]]:
    """The sample indices of each batch of ``method`` in a part file (a line per method and batch)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [[r["index"] for r in record["rows"]] for record in records if record["rows"][0]["method"] == method]


def assert_complete(out: Path, n: int) -> None:
    rows = samples(out)
    assert len(rows) == len(set((m, i) for m, i, _ in rows)), "duplicate (method, index) rows in samples.csv"
    per_method = Counter(m for m, _, _ in rows)
    assert per_method == {m: n for m in METHODS}
    for method in METHODS:
        assert sorted(i for m, i, _ in rows if m == method) == list(range(n))
    assert all(len(seq) == LENGTH and set(seq) <= set("ACGT") for _, _, seq in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert {m: e["n"] for m, e in summary.items()} == {m: n for m in METHODS}


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory) -> Path:
    """The reference: 7 samples decoded by one process."""
    out = tmp_path_factory.mktemp("single") / "out"
    run_main("decode.py", *decode_args(tiny, out, 7, *ONE))
    assert_complete(out, 7)
    return out


def test_ddp_predict_writes_every_sample_once_as_one_process_does(tiny, single, tmp_path):
    out = tmp_path / "ddp"
    res = run_decode(*decode_args(tiny, out, 7, *DDP))
    assert res.returncode == 0, res.stderr[-3000:]
    parts = out / "parts"
    assert sorted(p.name for p in parts.glob("*.jsonl")) == ["rank0.jsonl", "rank1.jsonl"]
    # Lightning's predict sharding: strided by rank, no padding, uneven batch counts allowed
    assert part_indices(parts / "rank0.jsonl") == [[0, 2], [4, 6]]
    assert part_indices(parts / "rank1.jsonl") == [[1, 3], [5]]
    # a line per (method, batch), written as the method finishes the batch: every method, batch by batch
    for part in parts.glob("*.jsonl"):
        records = [json.loads(line) for line in part.read_text().splitlines()]
        assert all(len({r["method"] for r in rec["rows"]}) == 1 and [s["method"] for s in rec["stats"]]
                   == [rec["rows"][0]["method"]] for rec in records)
        assert all(part_indices(part, m) == part_indices(part) for m in METHODS)
    assert_complete(out, 7)
    assert samples(out) == samples(single)
    assert (out / "pretrained.fasta").read_text() == (single / "pretrained.fasta").read_text()


def _copy_parts(source: Path, out: Path) -> None:
    """An output directory holding only ``source``'s part files and settings (as after a kill before the merge)."""
    shutil.copytree(source / "parts", out / "parts")
    shutil.copy(source / "fingerprints.json", out / "fingerprints.json")


def test_ddp_resume_decodes_only_the_missing_samples(tiny, single, tmp_path):
    out = tmp_path / "resumed"
    _copy_parts(single, out)
    part = out / "parts" / "rank0.jsonl"
    lines = part.read_text().splitlines()
    # killed during the third batch (samples 4, 5): its first method had finished it, the others had not
    part.write_text("\n".join(lines[: 2 * len(METHODS) + 1]) + "\n")
    first = json.loads(lines[2 * len(METHODS)])["rows"][0]["method"]
    assert part_indices(part, first) == [[0, 1], [2, 3], [4, 5]]
    assert all(part_indices(part, m) == [[0, 1], [2, 3]] for m in METHODS - {first})

    res = run_decode(*decode_args(tiny, out, 7, *DDP))
    assert res.returncode == 0, res.stderr[-3000:]
    # the DDP run sees 4, 5, 6 missing for some method and shards them: rank 0 gets [4, 6], rank 1 gets
    # [5]; the method that had finished 4 and 5 decodes only 6
    rank1 = out / "parts" / "rank1.jsonl"
    assert part_indices(part, first)[3:] == [[6]] and part_indices(rank1, first) == []
    assert all(part_indices(part, m)[2:] == [[4, 6]] and part_indices(rank1, m) == [[5]] for m in METHODS - {first})
    assert_complete(out, 7)
    assert samples(out) == samples(single)


def test_ddp_resume_with_fewer_missing_samples_than_processes(tiny, single, tmp_path):
    out = tmp_path / "one_left"
    _copy_parts(single, out)  # 0..6 written: only index 7 is left for 2 processes
    res = run_decode(*decode_args(tiny, out, 8, *DDP))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_complete(out, 8)
    assert [r for r in samples(out) if r[1] < 7] == samples(single)


def test_rerun_with_nothing_missing_still_merges_the_parts(tiny, single, tmp_path):
    out = tmp_path / "all_done"
    _copy_parts(single, out)  # every batch written, killed before the merge
    run_main("decode.py", *decode_args(tiny, out, 7, *ONE))
    assert (out / "samples.csv").is_file()
    assert samples(out) == samples(single)
