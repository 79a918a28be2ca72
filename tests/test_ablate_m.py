"""benchmarks/ablate_m.py: the derived config, the table, and one tiny end-to-end run."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tiny_dna import ROOT, build_tiny_checkpoints, tiny_overrides
from svdd_lightning.yaml_keys import read_config

_spec = importlib.util.spec_from_file_location("ablate_m", ROOT / "benchmarks" / "ablate_m.py")
ablate_m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablate_m)


@pytest.fixture(scope="module")
def compare() -> dict:
    return read_config(ROOT / "configs" / "dna" / "compare.yaml")


def test_derive_config_names_candidates_and_baselines(compare):
    derived = ablate_m.derive_config(compare, "svdd_mc", [4, 1, 2], ["pretrained", "best_of_n"])
    methods = derived["model"]["methods"]
    assert list(methods) == ["svdd_mc_m1", "svdd_mc_m2", "svdd_mc_m4", "pretrained", "best_of_n"]
    assert [methods[f"svdd_mc_m{m}"]["init_args"]["num_candidates"] for m in (1, 2, 4)] == [1, 2, 4]
    assert methods["svdd_mc_m2"]["init_args"]["value"] == compare["model"]["methods"]["svdd_mc"]["init_args"]["value"]
    assert methods["pretrained"] == compare["model"]["methods"]["pretrained"]
    assert methods["best_of_n"]["init_args"]["n"] == 11
    assert derived["model"]["reward"] == compare["model"]["reward"] and derived["data"] == compare["data"]
    assert compare["model"]["methods"]["svdd_mc"]["init_args"]["num_candidates"] == 10  # input untouched


def test_derive_config_keeps_other_svdd_settings():
    qed = read_config(ROOT / "configs" / "molecules" / "compare_qed.yaml")
    methods = ablate_m.derive_config(qed, "svdd_pm", [8], [])["model"]["methods"]
    assert list(methods) == ["svdd_pm_m8"]
    source = qed["model"]["methods"]["svdd_pm"]["init_args"]
    assert methods["svdd_pm_m8"]["init_args"]["select_every"] == source["select_every"] > 1
    assert methods["svdd_pm_m8"]["init_args"]["value"]["init_args"]["x0_steps"] == 6


@pytest.mark.parametrize("method, baselines, message", [
    ("best_of_n", [], "method 'best_of_n' is not an SVDD method"),
    ("svdd_xx", [], "method 'svdd_xx' is not in the config's model.methods"),
    ("svdd_pm", ["dps"], "baseline 'dps' is not in the config's model.methods"),
])
def test_derive_config_bad_method_is_one_line_error(compare, method, baselines, message):
    with pytest.raises(ValueError, match=message) as info:
        ablate_m.derive_config(compare, method, [1, 2], baselines)
    assert "\n" not in str(info.value)


def _entry(median: float, nfe: float) -> dict:
    return {"n": 4, "reward": {"mean": median, "median": median, "top20": median + 1, "top10": median + 2},
            "per_sample": {"denoiser_calls": nfe, "reward_calls": 2 * nfe}, "wall_seconds": 3.0}


def test_ablation_table():
    summary = {"svdd_pm_m2": _entry(2.0, 20), "svdd_pm_m1": _entry(1.0, 10), "pretrained": _entry(0.0, 8)}
    rows = ablate_m.ablation_table(summary, "svdd_pm", [2, 1])
    assert [r["m"] for r in rows] == [1, 2]
    assert rows[1] == {"m": 2, "method": "svdd_pm_m2", "n": 4, "median": 2.0, "top20": 3.0, "top10": 4.0,
                       "nfe_per_sample": 20, "reward_calls_per_sample": 40, "seconds": 3.0}
    with pytest.raises(ValueError, match="no results for svdd_pm_m4"):
        ablate_m.ablation_table(summary, "svdd_pm", [1, 4])


def test_ablate_m_end_to_end_on_the_dna_config(tmp_path, capsys):
    paths = build_tiny_checkpoints(tmp_path / "ckpt")
    out = tmp_path / "out"
    argv = ["--config", "configs/dna/compare.yaml", "--method", "svdd_pm", "--m", "1", "2", "--num_samples", "2",
            "--output_dir", str(out), "--baseline", "pretrained", "--extra",
            *tiny_overrides(paths)]
    ablate_m.main(argv)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"svdd_pm_m1", "svdd_pm_m2", "pretrained"}
    for name in ("samples.csv", "svdd_pm_m2.fasta", "reward_histogram.png", "ablation_m.yaml", "ablation_m.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "ablation_m.json").read_text())
    assert [r["m"] for r in result["rows"]] == [1, 2] and result["baselines"][0]["method"] == "pretrained"
    assert all(r["n"] == 2 for r in result["rows"])
    assert result["rows"][1]["reward_calls_per_sample"] > result["rows"][0]["reward_calls_per_sample"]
    assert "svdd_pm_m2" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="holds a different ablation"):
        ablate_m.main([*argv[:6], "4", *argv[6:]])
