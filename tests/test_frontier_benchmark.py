"""benchmarks/frontier.py: the budget methods, and one tiny end-to-end run on the DNA config."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from svdd_lightning import SVDD, BeamSearch, BestOfN, Decoder, NestedIS, Refinement
from tiny_dna import ROOT, build_tiny_checkpoints, tiny_overrides
from svdd_lightning.yaml_keys import read_config

_spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
frontier = importlib.util.module_from_spec(_spec)
sys.modules["frontier"] = frontier  # its dataclasses look their module up
_spec.loader.exec_module(frontier)


def test_budget_methods_match_svdd_pm_and_instantiate():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--methods", type=dict[str, Decoder])
    for name, task in frontier.TASKS.items():
        methods = frontier.budget_methods(task, 10)
        assert list(methods) == list(frontier.METHODS)
        built = parser.instantiate_classes(parser.parse_object({"methods": methods})).methods
        assert isinstance(built["best_of_n"], BestOfN) and isinstance(built["beam"], BeamSearch)
        assert built["svdd_pm"].num_candidates == built["nested_is"].num_candidates == 10
        assert built["beam"].beam_width * built["beam"].num_candidates == 10
        assert isinstance(built["refinement"], Refinement) and isinstance(built["refinement"].decoder, SVDD)
        assert isinstance(built["nested_is"], NestedIS) and built["nested_is"].alpha == task.alpha
        assert built["svdd_pm"].select_every == built["beam"].select_every == task.select_every, name


def test_shipped_dna_frontier_config_is_the_benchmark_at_m10():
    """configs/dna/frontier.yaml builds the same decoders as ``frontier.py --task dna --budgets 10``."""
    from jsonargparse import ArgumentParser

    from svdd_lightning.lightning.fingerprint import describe

    parser = ArgumentParser()
    parser.add_argument("--methods", type=dict[str, Decoder])
    shipped = read_config(ROOT / "configs" / "dna" / "frontier.yaml")["model"]["methods"]
    benchmark = {"pretrained": {"class_path": "svdd_lightning.PretrainedSampling"},
                 **frontier.budget_methods(frontier.TASKS["dna"], 10)}
    assert list(shipped) == list(benchmark)
    built = [parser.instantiate_classes(parser.parse_object({"methods": m})).methods for m in (shipped, benchmark)]
    assert describe(built[0]) == describe(built[1])


def test_frontier_end_to_end_on_the_dna_config(tmp_path, capsys):
    paths = build_tiny_checkpoints(tmp_path / "ckpt")
    out, results = tmp_path / "out", tmp_path / "results"
    argv = ["--task", "dna", "--budgets", "2", "--num-samples", "2", "--output-dir", str(out),
            "--results-dir", str(results), "--extra",
            *tiny_overrides(paths)]
    frontier.main(argv)
    result = json.loads((results / "frontier_dna_cpu.json").read_text())
    assert [(r["method"], r["budget"]) for r in result["rows"]] == [("pretrained", None)] + [
        (m, 2) for m in frontier.METHODS]
    assert all(r["n"] == 2 and r["nfe_per_sample"] > 0 and r["3mer_pearson"] is not None for r in result["rows"])
    assert {"gain_m2"} <= set(result["targets"])
    for name in ("frontier_dna_cpu.png", "frontier_dna_cpu_naturalness.png"):
        assert (results / name).is_file()
    assert "nested_is" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--budgets must be >= 2"):
        frontier.main(["--task", "dna", "--budgets", "1"])
