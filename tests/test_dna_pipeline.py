"""DNA domain and the two commands, on tiny models and data written by the tests. The commands run through
the scripts' entry points in this process (``run_main``), but for one check of what decode.py itself prints."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from svdd_lightning import checkpoints
from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion
from svdd_lightning.domains.dna.data import DNARegionsDataModule, encode_dna, read_regions
from svdd_lightning.domains.sequences.metrics import KmerCorrelation, kmer_frequencies
from svdd_lightning.domains.dna.oracles import ConvClassifier, EnformerStyleClassifier
from svdd_lightning.domains.sequences.oracle import OracleReward

from tiny_dna import (LENGTH, METHODS, build_tiny_checkpoints, cli_error, decode_args, read_samples, run_cli, run_main,
                      write_regions)


@pytest.fixture(scope="module")
def regions(tmp_path_factory) -> Path:
    return write_regions(tmp_path_factory.mktemp("data") / "regions.tsv")


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


# --- data and encoding ------------------------------------------------------------------------------
def test_encode_dna_names_the_bad_symbol():
    assert encode_dna(["ACGT", "acgt"]).tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match=r"sequence 1 has symbol 'N'; DNA sequences must use only A, C, G, T"):
        encode_dna(["ACGT", "ACNT"])
    with pytest.raises(ValueError, match="sequence 1 has length 3"):
        encode_dna(["ACGT", "ACG"])


def test_read_regions_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path"):
        read_regions(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("sequence\tsplit\nACGT\ttrain\n")
    with pytest.raises(ValueError, match=r"lacks columns \['cell_type', 'chr'\]"):
        read_regions(bad)


def test_datamodule_selects_splits_and_labels(regions):
    dm = DNARegionsDataModule(str(regions), positive="HepG2", batch_size=16)
    dm.setup()
    tokens, _ = next(iter(dm.train_dataloader()))
    assert tokens.shape == (16, LENGTH) and tokens.dtype == torch.long
    # every training label, not one shuffled batch (16 labels can all be one class)
    labels = torch.cat([batch_labels for _, batch_labels in dm.train_dataloader()])
    assert labels.numel() == 144 and 0 < labels.float().mean() < 1
    assert len(dm.datasets["train"]) == 144 and len(dm.datasets["val"]) == 48 and len(dm.datasets["test"]) == 48
    with pytest.raises(ValueError, match="data.positive"):
        DNARegionsDataModule(str(regions), positive="Liver").setup()


def test_wrong_alphabet_in_data_is_one_line_error(tmp_path, regions):
    bad = tmp_path / "n.tsv"
    text = regions.read_text().splitlines()
    fields = text[1].split("\t")
    fields[4] = "N" + fields[4][1:]
    bad.write_text("\n".join([text[0], "\t".join(fields), *text[2:]]) + "\n")
    with pytest.raises(ValueError, match="symbol 'N'"):
        DNARegionsDataModule(str(bad)).setup()


# --- oracles, rewards, metrics --------------------------------------------------------------------------
@pytest.mark.parametrize("network", [
    EnformerStyleClassifier(seq_len=LENGTH, stem_channels=8, stem_pool=2, tower_channels=(8,), num_transformer_layers=1,
                            num_heads=2),
    ConvClassifier(channels=(8, 8), kernel_sizes=(5, 3), hidden=8),
])
def test_oracles_take_tokens_or_one_hot(network):
    network.eval()
    tokens = torch.randint(0, 4, (5, LENGTH))
    onehot = torch.nn.functional.one_hot(tokens, 4).float()
    assert network(tokens).shape == (5,)
    torch.testing.assert_close(network(tokens), network(onehot))


def test_oracle_reward_floors_bad_sequences_and_is_differentiable(tiny_checkpoints):
    reward = OracleReward(str(tiny_checkpoints["reward"]))
    good = "ACGT" * (LENGTH // 4)
    scores = reward([good, "N" * LENGTH, good])
    assert scores[0] == pytest.approx(scores[2]) and scores[1] != scores[1]  # NaN
    probs = torch.full((2, LENGTH, 4), 0.25, requires_grad=True)
    reward.relaxed(probs).sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0
    assert OracleReward(str(tiny_checkpoints["eval"]), output="sigmoid")([good])[0] < 1


def test_kmer_correlation():
    seqs = ["ACGTACGTAC", "GGGCCCAAAT"]
    assert kmer_frequencies(seqs, 3).sum() == 16
    assert kmer_frequencies(["ACGNA"], 2).sum() == 2  # k-mers with N are skipped


def test_kmer_correlation_with_reference(tmp_path):
    ref = tmp_path / "r.fasta"
    ref.write_text(">a\nACGTTGCAACGT\n>b\nGGGTTTAAACCC\n")
    metric = KmerCorrelation(str(ref), k=3)
    assert metric(["ACGTTGCAACGT", "GGGTTTAAACCC"]) == pytest.approx(1.0)
    assert metric(["AAAAAAAAAAAA"]) < 0.5


# --- checkpoints --------------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = MaskedDiffusion(DilatedConvDenoiser(4, channels=8, dilations=(1,)), "ACGT", 8, num_steps=4)
    checkpoints.save(model, tmp_path / "m", metadata={"note": "x"})
    loaded = checkpoints.load(tmp_path / "m")
    x = torch.randint(0, 5, (3, 8))
    torch.testing.assert_close(loaded.denoise(x, 1), model.eval().denoise(x, 1))
    assert checkpoints.metadata(tmp_path / "m") == {"note": "x"}
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["class_path"] = "os.system"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="outside the trusted packages"):
        checkpoints.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        checkpoints.load(tmp_path / "nothing")


# --- the commands -------------------------------------------------------------------------------------
_decode_args = decode_args
_samples = read_samples


SIX = ("--data.num_samples", "6", "--data.batch_size", "2")


@pytest.fixture(scope="module")
def decoded(tiny_checkpoints, tmp_path_factory) -> Path:
    """decode.py on configs/dna/compare.yaml: 6 samples in batches of 2 (shared by the tests below, which
    only read it or copy it)."""
    out = tmp_path_factory.mktemp("decoded") / "out"
    run_main("decode.py", *_decode_args(tiny_checkpoints, out, *SIX))
    return out


def test_decode_writes_every_output_and_depends_only_on_sample_index(tiny_checkpoints, decoded, tmp_path):
    out_a, out_b = decoded, tmp_path / "b"
    for name in ("pretrained.fasta", "best_of_n.fasta", "svdd_pm.fasta", "svdd_mc.fasta", "samples.csv", "summary.json",
                 "reward_histogram.png", "config.yaml"):
        assert (out_a / name).is_file(), name
    summary = json.loads((out_a / "summary.json").read_text())
    assert set(summary) == METHODS
    entry = summary["svdd_pm"]
    assert entry["n"] == 6
    assert set(entry["reward"]) == {"mean", "median", "top20", "top10"}
    assert "fraction_above_0" in entry["eval_oracle"] and "median" in entry["elbo"]
    assert -1 <= entry["3mer_pearson"] <= 1 and 0 < entry["distinct_fraction"] <= 1
    assert summary["pretrained"]["per_sample"]["denoiser_calls"] <= 8
    assert summary["best_of_n"]["per_sample"]["reward_calls"] == 4  # 3 candidates + the final score
    assert entry["wall_seconds"] > 0 and entry["reward_failures"] == 0
    rows = _samples(out_a)
    assert len(rows) == 6 * len(METHODS) and all(len(seq) == LENGTH and set(seq) <= set("ACGT") for _, _, seq in rows)

    run_main("decode.py", *_decode_args(tiny_checkpoints, out_b, "--data.num_samples", "6", "--data.batch_size", "4"))
    assert _samples(out_b) == rows


def test_decode_resumes_after_a_kill_losing_nothing(tiny_checkpoints, decoded, tmp_path):
    full, resumed = decoded, tmp_path / "resumed"
    shutil.copytree(full, resumed)  # the same command's finished folder
    # simulate a kill during the last batch: its line was cut short, the merged outputs never written
    part = resumed / "parts" / "rank0.jsonl"
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    for name in ("samples.csv", "summary.json"):
        (resumed / name).unlink()
    run_main("decode.py", *_decode_args(tiny_checkpoints, resumed, *SIX))
    assert _samples(resumed) == _samples(full)


def test_decode_bad_input_is_one_line_error_from_the_script(tiny_checkpoints, tmp_path):
    """The script itself prints one line and no traceback (tests/test_bad_inputs.py checks ~35 inputs in-process)."""
    extra, message = ["--model.methods.svdd_pm.init_args.num_candidates", "0"], "error: SVDD.num_candidates must be >= 1"
    res = run_cli("decode.py", *_decode_args(tiny_checkpoints, tmp_path / "o"), *extra)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), res.stderr[-1500:]
    assert "Traceback" not in res.stderr


def test_train_fit_exports_a_loadable_model(regions, tmp_path):
    export = tmp_path / "export"
    run_main("train.py", "fit", "--config", "configs/dna/pretrain.yaml", "--data.init_args.path", str(regions),
             "--data.init_args.batch_size", "16", "--model.init_args.model.init_args.seq_len", str(LENGTH),
             "--model.init_args.model.init_args.backbone.init_args.channels", "8",
             "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
             "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
             "--trainer.callbacks.init_args.directory", str(export))
    model = checkpoints.load(export)
    assert isinstance(model, MaskedDiffusion) and model.seq_len == LENGTH
    assert "val/nelbo_bpt" in checkpoints.metadata(export)


def test_train_with_wrong_alphabet_data_is_one_line_error(tmp_path, regions):
    bad = tmp_path / "n.tsv"
    text = regions.read_text().splitlines()
    bad.write_text("\n".join([text[0], *[line.replace("A", "N", 1) for line in text[1:]]]) + "\n")
    error = cli_error("train.py", "fit", "--config", "configs/dna/pretrain.yaml", "--data.init_args.path", str(bad),
                      "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "runs"))
    assert error.startswith("error:") and "symbol 'N'" in error


def test_decode_with_the_jaspar_reward_overlay(tiny_checkpoints, tmp_path):
    out = tmp_path / "jaspar"
    run_main("decode.py", *_decode_args(tiny_checkpoints, out, "--data.num_samples", "2"),
             "--config", "configs/dna/reward_jaspar.yaml")
    summary = json.loads((out / "summary.json").read_text())
    assert all(0 <= e["reward"]["median"] <= 1 for e in summary.values())


def test_svdd_mc_decodes_with_a_value_network_from_a_checkpoint(tiny_checkpoints, tmp_path):
    from svdd_lightning import SVDD, NetworkValue

    torch.manual_seed(0)
    value_net = EnformerStyleClassifier(seq_len=LENGTH, stem_channels=8, stem_pool=2, tower_channels=(8,),
                                        num_transformer_layers=1, num_heads=2, input_symbols=5,
                                        time_conditioning=True)
    checkpoints.save(value_net.eval(), tmp_path / "value")
    model = checkpoints.load(tiny_checkpoints["mdlm"])
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    with torch.inference_mode():
        result = SVDD(NetworkValue(str(tmp_path / "value")), num_candidates=5).sample(
            model, lambda seqs: [s.count("G") for s in seqs], gens)
    assert len(result.samples) == 4 and all(set(s) <= set("ACGT") for s in result.samples)
    per_sample = result.stats.per_sample(4)
    # only the kept candidate is denoised: at most T denoiser calls; M values at every step but the last
    assert per_sample["denoiser_calls"] <= model.num_steps
    assert per_sample["value_calls"] == 5 * (model.num_steps - 1)
    # the reward scores the last step's M candidates and the final pick, identical samples once
    assert 1 <= per_sample["reward_calls"] <= 5 + 1


def test_warm_start_copies_matching_weights_and_widens_the_input_layer(tmp_path):
    oracle = EnformerStyleClassifier(seq_len=LENGTH, stem_channels=8, stem_pool=2, tower_channels=(8,),
                                     num_transformer_layers=1, num_heads=2).eval()
    checkpoints.save(oracle, tmp_path / "oracle")
    value = EnformerStyleClassifier(seq_len=LENGTH, stem_channels=8, stem_pool=2, tower_channels=(8,),
                                    num_transformer_layers=1, num_heads=2, input_symbols=5, time_conditioning=True)
    counts = checkpoints.warm_start(value, tmp_path / "oracle")
    assert counts["sliced"] == 1 and counts["kept"] == 4  # stem gains the [MASK] channel; the time MLP is new
    torch.testing.assert_close(value.stem.weight[:, :4], oracle.stem.weight)
    assert value.stem.weight[:, 4].abs().sum() == 0
    torch.testing.assert_close(value.head[-1].weight, oracle.head[-1].weight)
