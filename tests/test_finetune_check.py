"""benchmarks/finetune_check.py: the arm configs and the bootstrap intervals."""
from __future__ import annotations

import importlib.util

import pytest

from svdd_lightning.domains.sequences.metrics import kmer_correlation
from tiny_dna import ROOT

_spec = importlib.util.spec_from_file_location("finetune_check", ROOT / "benchmarks" / "finetune_check.py")
finetune_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(finetune_check)


def test_arm_config_keeps_one_method_and_leaves_the_input():
    config = {"model": {"methods": {"pretrained": {"a": 1}, "svdd_pm": {"b": 2}}, "seed": 0}, "data": {"x": 1}}
    arm = finetune_check.arm_config(config, "svdd_pm")
    assert arm == {"model": {"methods": {"svdd_pm": {"b": 2}}, "seed": 0}, "data": {"x": 1}}
    assert list(config["model"]["methods"]) == ["pretrained", "svdd_pm"]


def test_bootstrap_intervals_cover_the_point_estimates():
    reference = ["ACGTACGTAC", "GGCCAATTGC", "TTGACCAGTA"] * 4
    finetuned = (["ACGTACGTAA", "GGCCAATTGG", "TTGACCAGTT", "ACGGACGTAC"] * 8, [float(i % 7) for i in range(32)])
    svdd = (["AAAAACGTAC", "GGCCCCCCGC", "TTGATTTTTA", "ACGTAAAAAC"] * 8, [float(i % 5) for i in range(32)])
    out = finetune_check.bootstrap(finetuned, svdd, reference, 3, resamples=200)
    low, high = out["reward_median_difference_bootstrap_95"]
    assert low <= 3.0 - 2.0 <= high and low < high  # medians 3 and 2
    for name, (seqs, _) in (("finetuned_1x", finetuned), ("svdd_pm_from_pretrained", svdd)):
        low, high = out[f"{name}_3mer_pearson_bootstrap_95"]
        point = kmer_correlation(seqs, reference, 3)
        assert -1.0 <= low <= high <= 1.0
        assert low - 1e-9 <= point <= high + 1e-9
    again = finetune_check.bootstrap(finetuned, svdd, reference, 3, resamples=200)
    assert again == out  # seeded


def test_read_arm_refuses_too_few_designs(tmp_path):
    (tmp_path / "samples.csv").write_text("method,index,sequence,reward\nsvdd_pm,1,ACGT,2.0\nsvdd_pm,0,TTTT,1.0\n"
                                          "pretrained,0,GGGG,0.5\n")
    assert finetune_check.read_arm(tmp_path, "svdd_pm", 2) == (["TTTT", "ACGT"], [1.0, 2.0])
    with pytest.raises(ValueError, match="fewer than --num-samples 3"):
        finetune_check.read_arm(tmp_path, "svdd_pm", 3)
