"""Tiny DNA checkpoints and helpers for the tests that run train.py / decode.py."""
from __future__ import annotations

import contextlib
import csv
import os
import random
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from svdd_lightning import checkpoints
from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion
from svdd_lightning.domains.dna.oracles import ConvClassifier, EnformerStyleClassifier

ROOT = Path(__file__).resolve().parents[1]
LENGTH = 24
METHODS = {"pretrained", "best_of_n", "svdd_pm", "svdd_mc"}


def tiny_enformer(**kwargs) -> EnformerStyleClassifier:
    return EnformerStyleClassifier(seq_len=LENGTH, stem_channels=8, stem_pool=2, tower_channels=(8,),
                                   num_transformer_layers=1, num_heads=2, **kwargs)


def build_tiny_checkpoints(root: Path) -> dict[str, Path]:
    """Random tiny versions of every checkpoint configs/dna/compare.yaml names, and a reference FASTA."""
    torch.manual_seed(0)
    modules = {
        "mdlm": MaskedDiffusion(DilatedConvDenoiser(4, channels=8, dilations=(1, 2)), "ACGT", LENGTH, num_steps=8),
        "reward": tiny_enformer(),
        "eval": ConvClassifier(channels=(8,), kernel_sizes=(5,), hidden=8),
        "value": tiny_enformer(input_symbols=5, time_conditioning=True),
    }
    paths = {key: checkpoints.save(module.eval(), root / key) for key, module in modules.items()}
    paths["reference"] = root / "ref.fasta"
    paths["reference"].write_text("".join(f">r{i}\n{'ACGT' * (LENGTH // 4)}\n" for i in range(3)))
    return paths


def write_regions(path: Path) -> Path:
    """A small regions TSV: 'HepG2' rows rich in GC, other cell types AT-rich."""
    rng = random.Random(0)
    lines = ["dhs_id\tchr\tstart\tend\tsequence\tsplit\tcell_type"]
    for i in range(240):
        cell = ["HepG2", "K562", "GM12878", "hESCT0"][i % 4]
        weights = [1, 3, 3, 1] if cell == "HepG2" else [3, 1, 1, 3]
        seq = "".join(rng.choices("ACGT", weights=weights, k=LENGTH))
        split = ["train", "train", "train", "validation", "test"][i % 5]
        lines.append(f"r{i}\tchr{1 + i % 6}\t0\t{LENGTH}\t{seq}\t{split}\t{cell}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_overrides(paths: dict[str, Path]) -> list[str]:
    """Overrides of configs/dna/compare.yaml that swap in the tiny checkpoints (model, reward, evaluation
    oracle, 3-mer reference) and quiet the trainer; the config's methods are left as they are."""
    return ["--model.model", str(paths["mdlm"]),
            "--model.reward.init_args.checkpoint", str(paths["reward"]),
            "--model.metrics.eval_oracle.init_args.fn.init_args.checkpoint", str(paths["eval"]),
            "--model.metrics.elbo.init_args.num_times", "2",
            "--writer.set_metrics.3mer_pearson.init_args.reference", str(paths["reference"]),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def decode_args(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """``decode.py predict`` on configs/dna/compare.yaml with the tiny checkpoints and small settings."""
    return ["predict", "--config", "configs/dna/compare.yaml", "--output_dir", str(out), *tiny_overrides(paths),
            "--model.methods.best_of_n.init_args.n", "3",
            "--model.methods.svdd_pm.init_args.num_candidates", "3",
            "--model.methods.svdd_mc.init_args.num_candidates", "3",
            "--model.methods.svdd_mc.init_args.value.init_args.network", str(paths["value"]), *extra]


def run_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run train.py or decode.py from the repository root, one thread, no inherited DDP variables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("SVDD_DEBUG", "MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK"):
        env.pop(key, None)
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@contextlib.contextmanager
def _like_the_script():
    """From the repository root with one thread, as :func:`run_cli` runs a script; afterwards the float32
    matmul precision decode.py sets and the torch threads are restored for the other tests."""
    precision, threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
    try:
        with contextlib.chdir(ROOT), mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.set_num_threads(threads)


def entry_point(script: str):
    """The function behind ``train.py`` or ``decode.py`` (the scripts only call it)."""
    from svdd_lightning.lightning.cli import main_decode, main_train

    return {"decode.py": main_decode, "train.py": main_train}[script]


def run_main(script: str, *args: str) -> None:
    """``train.py`` or ``decode.py`` run in this process through the script's entry point: no interpreter
    start-up and imports per run (~8-10 s each). A CLI error fails the test with its text. Tests of what a
    script itself prints, or of DDP (which relaunches the script), use :func:`run_cli`."""
    with _like_the_script():
        try:
            entry_point(script)(list(args))
        except SystemExit as err:  # _one_line_errors exits with the message
            if err.code not in (0, None):
                pytest.fail(f"{script} exited: {err.code}")


def cli_error(script: str, *args: str) -> str:
    """The error a run of ``train.py`` or ``decode.py`` in this process exits with (what the script prints
    on stderr); it must be one line."""
    with _like_the_script(), pytest.raises(SystemExit) as err:
        entry_point(script)(list(args))
    message = str(err.value.code)
    assert err.value.code not in (0, None) and "\n" not in message, message
    return message


def read_samples(out: Path) -> list[tuple[str, int, str]]:
    """(method, index, sequence) rows of a run's samples.csv."""
    with open(out / "samples.csv") as handle:
        return [(r["method"], int(r["index"]), r["sequence"]) for r in csv.DictReader(handle)]
