"""RNA 5'UTR domain: data split, rewards, ConvGRU, and both UTR jobs on tiny models (train.py and decode.py
run through their entry points in this process)."""
from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import torch

from svdd_lightning import WeightedSum, checkpoints
from svdd_lightning.core.reward import GuardedReward
from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion
from svdd_lightning.domains.utr.data import UTRDataModule, encode_rna, group_split, read_utrs
from svdd_lightning.domains.utr.networks import ConvGRU
from svdd_lightning.domains.utr.rewards import MinimumFreeEnergy, UpstreamAUGs
from svdd_lightning.domains.sequences.oracle import OracleReward
from svdd_lightning.domains.sequences.metrics import GCContent, kmer_frequencies

from tiny_dna import METHODS, run_main

LENGTH = 20
HAIRPIN = "GGGGCGCAAAAGCGCCCCAA"  # a stable stem-loop, 20 nt


@pytest.fixture(scope="module")
def utr_table(tmp_path_factory) -> Path:
    """A small UTR table in the published layout (DNA letters), genes with a few variants each."""
    rng = random.Random(0)
    lines = ["utr,mrl,read_count,id,gene_symbol,variant"]
    for gene in range(60):
        reference = "".join(rng.choices("ACGT", k=LENGTH))
        for v in range(3):
            seq = reference if v == 0 else reference[:v] + rng.choice("ACGT") + reference[v + 1:]
            mrl = 3 + seq.count("G") / 4 - seq.count("ATG")
            lines.append(f"{seq},{mrl:.3f},100,id{gene}_{v},GENE{gene},rs{gene}")
    path = tmp_path_factory.mktemp("utr") / "utrs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_utr_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("utr_ckpt")
    torch.manual_seed(0)
    modules = {
        "mdlm": MaskedDiffusion(DilatedConvDenoiser(4, channels=8, dilations=(1, 2)), "ACGU", LENGTH, num_steps=8),
        "oracle": ConvGRU(channels=(8,), kernel_size=3, hidden=8),
        "value": ConvGRU(channels=(8,), kernel_size=3, hidden=8, input_symbols=5, time_conditioning=True),
    }
    paths = {key: checkpoints.save(module.eval(), root / key) for key, module in modules.items()}
    paths["reference"] = root / "ref.fasta"
    paths["reference"].write_text("".join(f">r{i}\n{HAIRPIN}\n" for i in range(3)))
    return paths


# --- data ---------------------------------------------------------------------------------------------
def test_group_split_keeps_every_gene_in_one_split_and_is_stable():
    genes = torch.arange(2000).remainder(400).tolist()
    import pandas as pd

    splits = group_split(pd.Series(genes), 0.1, 0.2, seed=3)
    per_gene = pd.DataFrame({"gene": genes, "split": splits}).groupby("gene")["split"].nunique()
    assert (per_gene == 1).all()
    fractions = splits.value_counts(normalize=True)
    assert 0.7 < fractions["train"] < 0.8 and 0.15 < fractions["test"] < 0.25
    # a gene's split does not depend on which other genes are present
    assert group_split(pd.Series(genes[:50]), 0.1, 0.2, seed=3).tolist() == splits[:50].tolist()
    with pytest.raises(ValueError, match="data.val_fraction"):
        group_split(pd.Series(genes), 0.5, 0.5)


def test_datamodule_reads_dna_letters_as_rna_and_splits_by_gene(utr_table):
    dm = UTRDataModule(str(utr_table), val_fraction=0.2, test_fraction=0.2, batch_size=8)
    dm.setup()
    frame = dm.split_frame()
    assert frame.groupby("gene_symbol")["split"].nunique().max() == 1
    tokens, mrl = dm.datasets["train"].tensors
    assert tokens.shape[1] == LENGTH and int(tokens.max()) <= 3 and mrl.dtype == torch.float32
    assert sum(len(d) for d in dm.datasets.values()) == 180


def test_encode_rna_accepts_acgt_and_names_a_bad_symbol(tmp_path, tiny_utr_checkpoints):
    assert encode_rna(["ACGU", "acgt"]).tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    model = checkpoints.load(tiny_utr_checkpoints["mdlm"])
    dna = HAIRPIN.replace("U", "T")
    assert model.encode([dna]).tolist() == model.encode([HAIRPIN]).tolist()
    assert model.decode(model.encode([dna])) == [HAIRPIN]  # ACGT in, ACGU out
    with pytest.raises(ValueError, match="sequence 0 has symbol 'N'; UTR sequences must use only A, C, G, U"):
        encode_rna(["ACNU"])
    bad = tmp_path / "bad.csv"
    bad.write_text("utr,mrl\nACGU,1.0\n")
    with pytest.raises(ValueError, match=r"lacks columns \['gene_symbol'\]"):
        read_utrs(bad)
    with pytest.raises(FileNotFoundError, match="data.path"):
        read_utrs(tmp_path / "missing.csv")


# --- rewards and evaluation columns --------------------------------------------------------------------
def test_minimum_free_energy_sign_alphabets_and_failures():
    mfe = MinimumFreeEnergy()
    unfolded, hairpin = "A" * LENGTH, HAIRPIN
    rewards = mfe([unfolded, hairpin, hairpin.replace("U", "T")])
    assert rewards[0] == 0.0 and rewards[1] > 3.0  # more stable = higher reward
    assert rewards[2] == rewards[1]  # DNA letters read as RNA
    assert mfe.energies([hairpin])[0] == -rewards[1]
    assert MinimumFreeEnergy(per_nucleotide=True)([hairpin])[0] == pytest.approx(rewards[1] / LENGTH)
    guarded = GuardedReward(mfe, floor=-1.0)
    scores = guarded.evaluate([hairpin, "ACGN" * 5])
    assert scores.values.tolist()[1] == -1.0 and scores.failures == 1


def test_minimum_free_energy_in_a_process_pool_matches_one_process():
    rng = random.Random(1)
    seqs = ["".join(rng.choices("ACGU", k=30)) for _ in range(40)]
    pooled = MinimumFreeEnergy(processes=2)
    try:
        assert pooled(seqs) == MinimumFreeEnergy()(seqs)
        assert pooled.workers._pool is not None  # 40 sequences: chunks went to the workers
    finally:
        pooled.close()


def test_upstream_augs_and_gc_content():
    assert UpstreamAUGs()(["AUGAUG", "CAUGG", "ATGCC", "CCCC"]) == [2.0, 1.0, 1.0, 0.0]
    assert GCContent()(["GGCC", "AUGC", "AAAA"]) == [1.0, 0.5, 0.0]
    assert torch.equal(kmer_frequencies(["ACGU"], 2), kmer_frequencies(["ACGT"], 2))


def test_weighted_sum_of_oracle_and_stability(tiny_utr_checkpoints):
    oracle = OracleReward(str(tiny_utr_checkpoints["oracle"]), alphabet="ACGU")
    mfe = MinimumFreeEnergy()
    total = WeightedSum({"mrl": oracle, "stability": mfe}, weights={"stability": 0.5})
    seqs = [HAIRPIN, "A" * LENGTH]
    expected = [a + 0.5 * b for a, b in zip(oracle(seqs), mfe(seqs))]
    assert total(seqs) == pytest.approx(expected)
    assert math.isnan(total(["N" * LENGTH])[0])


def test_conv_gru_takes_tokens_or_one_hot_and_needs_t_when_time_conditioned():
    net = ConvGRU(channels=(8,), kernel_size=3, hidden=8).eval()
    tokens = torch.randint(0, 4, (3, LENGTH))
    relaxed = torch.nn.functional.one_hot(tokens, 4).float()
    assert torch.allclose(net(tokens), net(relaxed), atol=1e-6) and net(tokens).shape == (3,)
    value = ConvGRU(channels=(8,), kernel_size=3, hidden=8, input_symbols=5, time_conditioning=True).eval()
    assert value(torch.randint(0, 5, (3, LENGTH)), torch.rand(3)).shape == (3,)
    with pytest.raises(ValueError, match="time-conditioned"):
        value(torch.randint(0, 5, (3, LENGTH)))


# --- the jobs -------------------------------------------------------------------------------------------
def _decode_args(config: str, paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    reward = ["--model.reward.init_args.checkpoint", str(paths["oracle"])] if "mrl" in config else []
    metric = [] if "mrl" in config else ["--model.metrics.mrl.init_args.fn.init_args.checkpoint", str(paths["oracle"])]
    return ["predict", "--config", config, "--output_dir", str(out), "--model.model", str(paths["mdlm"]),
            *reward, *metric, "--model.metrics.elbo.init_args.num_times", "2",
            "--model.methods.best_of_n.init_args.n", "3",
            "--model.methods.svdd_pm.init_args.num_candidates", "3",
            "--model.methods.svdd_mc.init_args.num_candidates", "3",
            "--model.methods.svdd_mc.init_args.value.init_args.network", str(paths["value"]),
            "--writer.set_metrics.3mer_pearson.init_args.reference", str(paths["reference"]),
            "--data.num_samples", "4", "--data.batch_size", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


@pytest.mark.parametrize("config", ["configs/utr/compare_mrl.yaml", "configs/utr/compare_stability.yaml"])
def test_utr_job_writes_rna_designs_with_gc_and_upstream_aug_columns(config, tiny_utr_checkpoints, tmp_path):
    out = tmp_path / "out"
    run_main("decode.py", *_decode_args(config, tiny_utr_checkpoints, out))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == METHODS
    with open(out / "samples.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * len(METHODS)
    for row in rows:
        seq = row["sequence"]
        assert len(seq) == LENGTH and set(seq) <= set("ACGU")
        assert float(row["gc_content"]) == pytest.approx(GCContent()([seq])[0])
        assert float(row["upstream_augs"]) == UpstreamAUGs()([seq])[0]
    fasta = (out / "svdd_pm.fasta").read_text().splitlines()
    assert fasta[0].startswith(">svdd_pm_0") and set(fasta[1]) <= set("ACGU")
    entry = summary["svdd_pm"]
    assert "fraction_above_0.5" in entry["upstream_augs"] and "median" in entry["gc_content"]
    if "stability" in config:  # the reward is -MFE, recomputed here from the designs
        assert all(float(r["reward"]) == pytest.approx(MinimumFreeEnergy()([r["sequence"]])[0], abs=1e-4)
                   for r in rows)
        assert entry["reward_failures"] == 0


def test_weighted_reward_overlay_decodes(tiny_utr_checkpoints, tmp_path):
    out = tmp_path / "sum"
    args = _decode_args("configs/utr/compare_mrl.yaml", tiny_utr_checkpoints, out)
    args += ["--config", "configs/utr/reward_mrl_plus_stability.yaml",
             "--model.reward.init_args.rewards.mrl.init_args.checkpoint", str(tiny_utr_checkpoints["oracle"]),
             "--data.num_samples", "1"]  # the first row is checked
    run_main("decode.py", *args)
    oracle = OracleReward(str(tiny_utr_checkpoints["oracle"]))
    with open(out / "samples.csv") as handle:
        row = next(csv.DictReader(handle))
    expected = oracle([row["sequence"]])[0] + 0.1 * MinimumFreeEnergy()([row["sequence"]])[0]
    assert float(row["reward"]) == pytest.approx(expected, abs=1e-4)


def test_train_mrl_oracle_and_stability_value_network(utr_table, tiny_utr_checkpoints, tmp_path):
    oracle_dir = tmp_path / "oracle"
    run_main("train.py", "fit", "--config", "configs/utr/oracle_mrl.yaml", "--data.init_args.path", str(utr_table),
             "--data.init_args.batch_size", "16", "--data.init_args.val_fraction", "0.2",
             "--data.init_args.test_fraction", "0.2", "--trainer.max_epochs", "2",
             "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
             "--trainer.callbacks", "svdd_lightning.lightning.training.ExportBest",
             "--trainer.callbacks.directory", str(oracle_dir), "--trainer.callbacks.monitor", "val/pearson",
             "--trainer.callbacks.mode", "max")
    assert isinstance(checkpoints.load(oracle_dir), ConvGRU) and "val/pearson" in checkpoints.metadata(oracle_dir)

    value_dir = tmp_path / "value"
    run_main("train.py", "fit", "--config", "configs/utr/value_mc_stability.yaml",
             "--data.init_args.model", str(tiny_utr_checkpoints["mdlm"]),
             "--data.init_args.num_rollouts", "32", "--data.init_args.val_rollouts", "16",
             "--data.init_args.levels_per_rollout", "4", "--data.init_args.shard_size", "16",
             "--data.init_args.batch_size", "32", "--data.init_args.cache_dir", str(tmp_path / "rollouts"),
             "--model.init_args.network.init_args.channels", "[8]",
             "--model.init_args.network.init_args.hidden", "8",
             "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs_v"),
             "--trainer.enable_progress_bar", "false",
             "--trainer.callbacks.init_args.directory", str(value_dir))
    assert "val/mse" in checkpoints.metadata(value_dir)
