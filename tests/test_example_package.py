"""The worked example outside svdd_lightning (examples/peptide_svdd, installed by .ci/run): its configs
run through decode.py (pretrained, Best-of-N, SVDD-PM, SMC), train.py fit trains an SVDD-MC value
network on rollouts of its model, and decode.py decodes with that network; svdd_lightning is not edited."""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from svdd_lightning.lightning.cli import main_decode, main_train
from svdd_lightning.yaml_keys import read_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "peptide_svdd"
try:
    import peptide_svdd
except ImportError:  # a local run without `pip install -e examples/peptide_svdd` (CI installs it)
    sys.path.insert(0, str(EXAMPLE))
    import peptide_svdd


def config(name: str) -> dict:
    return read_config(EXAMPLE / "configs" / name)


def write(cfg: dict, path: Path) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run(main, *args: str) -> None:
    precision = torch.get_float32_matmul_precision()
    try:
        main(list(args))
    except SystemExit as err:
        pytest.fail(f"CLI exited: {err.code}")
    finally:
        torch.set_float32_matmul_precision(precision)


def summary(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


def test_installed_outside_svdd_lightning():
    assert "svdd_lightning" not in Path(peptide_svdd.__file__).resolve().parts
    if os.environ.get("CI"):
        assert importlib.metadata.distribution("peptide-svdd-example").version


def test_decode_fit_a_value_network_and_decode_with_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    pretrained = str(EXAMPLE / "checkpoints/pretrained/model.safetensors")

    compare = config("compare.yaml")
    compare["model"]["model"]["init_args"]["weights"] = pretrained
    compare["data"] = {"num_samples": 16, "batch_size": 16}
    compare["trainer"]["enable_progress_bar"] = False
    svdd_mc = compare["model"]["methods"].pop("svdd_mc")
    run(main_decode, "predict", "--config", write(compare, tmp_path / "compare.yaml"), "--output_dir", "baselines")
    first = summary(tmp_path / "baselines")
    assert set(first) == {"pretrained", "best_of_n", "svdd_pm", "smc"}
    assert (tmp_path / "baselines/svdd_pm.fasta").is_file()
    mean = {m: first[m]["reward"]["mean"] for m in first}
    assert mean["svdd_pm"] > mean["pretrained"] + 1 and mean["smc"] > mean["pretrained"] + 1, mean
    assert "data_log_likelihood" in first["svdd_pm"]

    value = config("value_mc.yaml")
    value["trainer"]["callbacks"][0]["init_args"]["directory"] = str(tmp_path / "value_mc")
    value["trainer"].update(max_epochs=4, enable_progress_bar=False, enable_model_summary=False)
    value["data"]["init_args"].update(model={"class_path": "peptide_svdd.PeptideDiffusion",
                                             "init_args": {"weights": pretrained}},
                                      num_rollouts=1024, val_rollouts=128, shard_size=128, cache_dir=str(tmp_path / "rollouts"))
    run(main_train, "fit", "--config", write(value, tmp_path / "value_mc.yaml"))
    exported = json.loads((tmp_path / "value_mc/config.json").read_text())
    assert exported["class_path"] == "peptide_svdd.value.PeptideValueNet" and "val/mse" in exported["metadata"]

    svdd_mc["init_args"]["value"]["init_args"]["network"]["init_args"]["weights"] = str(tmp_path / "value_mc/model.safetensors")
    compare["model"]["methods"] = {"svdd_mc": svdd_mc}
    run(main_decode, "predict", "--config", write(compare, tmp_path / "compare_mc.yaml"), "--output_dir", "mc")
    second = summary(tmp_path / "mc")["svdd_mc"]
    assert second["reward"]["mean"] > mean["pretrained"] + 1, (second["reward"], mean)
    assert second["per_sample"]["value_calls"] > 0
