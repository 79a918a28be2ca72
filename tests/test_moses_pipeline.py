"""The MOSES SMILES pipeline on a tiny CSV: the pretraining config resolves and fits 2 steps, the compare
config decodes the exported model with the MOSES set metrics, and benchmarks/moses_quality.py scores it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from svdd_lightning import checkpoints
from svdd_lightning.domains.dna.oracles import EnformerStyleClassifier
from svdd_lightning.domains.molecules.string_diffusion import MoleculeStringDiffusion
from svdd_lightning.yaml_keys import read_config
from tiny_dna import ROOT, run_main

CONFIG = "configs/molecules/pretrain_moses_smiles.yaml"
MOLECULES = ["CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1", "CC(C)(C)C(=O)C(Oc1ccc(Cl)cc1)n1ccnc1", "Cc1ccc(Br)cc1",
             "CC(=O)Nc1ccc(O)cc1", "O=C(O)c1ccccc1F", "CN1CCN(C)CC1", "COc1ccc(C#N)cc1", "CC1=CC(=O)CCC1"] * 4


def test_the_pretraining_config_resolves(capsys):
    run_main("train.py", "fit", "--config", CONFIG, "--print_config")
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]["model"]
    assert model["class_path"].endswith("MoleculeStringDiffusion")
    assert printed["trainer"]["callbacks"][0]["init_args"]["directory"] == "runs/molecules/mdlm_moses_smiles"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(the exported model, the tiny CSV): ``train.py fit`` with the shipped config, 2 steps of a tiny DiT."""
    root = tmp_path_factory.mktemp("moses")
    pd.DataFrame({"SMILES": MOLECULES}).to_csv(root / "train.csv", index=False)
    config = read_config(ROOT / CONFIG)
    config["trainer"]["callbacks"][0]["init_args"]["directory"] = str(root / "export")
    (root / "pretrain.yaml").write_text(yaml.safe_dump(config))
    run_main("train.py", "fit", "--config", str(root / "pretrain.yaml"), "--data.init_args.path", str(root / "train.csv"),
             "--data.init_args.val_fraction", "0.3", "--data.init_args.batch_size", "4",
             "--model.init_args.model.init_args.backbone.init_args.hidden_size", "16",
             "--model.init_args.model.init_args.backbone.init_args.cond_dim", "8",
             "--model.init_args.model.init_args.backbone.init_args.n_blocks", "1",
             "--model.init_args.model.init_args.backbone.init_args.n_heads", "2",
             "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
             "--trainer.default_root_dir", str(root / "runs"))
    return root / "export", root / "train.csv"


def test_two_steps_export_a_molecule_string_model(trained):
    export, _ = trained
    model = checkpoints.load(export)
    assert isinstance(model, MoleculeStringDiffusion) and model.seq_len == 54 and len(model.vocabulary) == 25
    assert "val/nelbo_bpt" in checkpoints.metadata(export)


def decode_on_tiny_csv(config: dict, csv: Path, tmp_path: Path) -> Path:
    """``decode.py predict`` of a compare config whose MOSES set metrics read the tiny CSV (as training and
    reference set) and skip FCD (ChemNet is slow on a CPU; test_moses_metrics.py and the benchmark run it);
    returns the output directory."""
    metrics = config["writer"]["set_metrics"]
    del metrics["fcd_test"]
    for metric in metrics.values():
        if isinstance(metric, dict) and "path" in metric["init_args"]:
            metric["init_args"]["path"] = str(csv)
            metric["init_args"].pop("max_molecules", None)
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    run_main("decode.py", "predict", "--config", str(path), "--output_dir", str(out))
    return out


def test_the_compare_config_decodes_it_with_the_moses_set_metrics(trained, value_network, tmp_path):
    export, csv = trained
    config = read_config(ROOT / "configs/molecules/compare_qed_moses.yaml")
    model = config["model"]
    model.update(model=str(export), model_args={"num_steps": 4}, max_failure_fraction=None)
    model["reward"]["init_args"]["processes"] = 1
    model["methods"]["best_of_n"]["init_args"]["n"] = 2
    model["methods"]["svdd_pm"]["init_args"]["num_candidates"] = 2
    model["methods"]["svdd_mc"]["init_args"]["num_candidates"] = 2
    model["methods"]["svdd_mc"]["init_args"]["value"]["init_args"]["network"] = str(value_network)
    config["data"] = {"num_samples": 4, "batch_size": 2}
    out = decode_on_tiny_csv(config, csv, tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pretrained", "best_of_n", "svdd_pm", "svdd_mc"}
    for entry in summary.values():
        assert entry["n"] == 4 and entry["valid"]["mean"] == pytest.approx(entry["validity"])
        assert 0 <= entry["unique@1000"] <= 1 and "wasserstein_logp" in entry
    rows = pd.read_csv(out / "samples.csv", keep_default_na=False)
    invalid = rows[rows["smiles"] == ""]
    assert (invalid["reward"] == 0.0).all() and (invalid["valid"] == 0.0).all()


def test_the_moses_benchmark_writes_its_figures(trained, tmp_path):
    export, csv = trained
    spec = importlib.util.spec_from_file_location("moses_quality", ROOT / "benchmarks" / "moses_quality.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "quality.json"
    result = benchmark.main(["--model", str(export), "--train", str(csv), "--test", str(csv), "--num-samples", "4",
                             "--num-steps", "4", "--output", str(out)])
    assert json.loads(out.read_text())["validity"] == result["validity"]
    assert result["samples"] == 4 and 0 <= result["validity"] <= 1 and result["num_steps"] == 4
    assert {"unique@1000", "unique@10000", "novelty", "internal_diversity", "fcd_test", "wasserstein_qed",
            "wasserstein_sa", "wasserstein_logp", "wasserstein_weight"} <= set(result)


@pytest.fixture(scope="module")
def value_network(trained, tmp_path_factory) -> Path:
    """``train.py fit`` with the shipped token value-network config on 16 rollouts of the tiny model."""
    export, _ = trained
    root = tmp_path_factory.mktemp("moses_value")
    run_main("train.py", "fit", "--config", "configs/molecules/value_mc_qed_moses.yaml",
             "--data.init_args.model", str(export), "--data.init_args.model_args", '{"num_steps": 4}',
             "--data.init_args.num_rollouts", "16", "--data.init_args.val_rollouts", "16",
             "--data.init_args.shard_size", "16", "--data.init_args.levels_per_rollout", "2",
             "--data.init_args.cache_dir", str(root / "rollouts"), "--data.init_args.reward.init_args.processes", "1",
             "--data.init_args.batch_size", "8",
             "--model.init_args.network.init_args.seq_len", "54",        # the tiny model is over SMILES tokens
             "--model.init_args.network.init_args.input_symbols", "26",  # its 25 tokens and [MASK]
             "--model.init_args.network.init_args.stem_channels", "8",
             "--model.init_args.network.init_args.tower_channels", "[8, 8]",
             "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root / "runs"),
             "--trainer.enable_progress_bar", "false", "--trainer.callbacks.init_args.directory", str(root / "export"))
    return root / "export"


def test_the_value_config_trains_a_time_conditioned_token_network(value_network):
    network = checkpoints.load(value_network)
    assert isinstance(network, EnformerStyleClassifier) and network.time_mlp is not None
    assert "val/mse" in checkpoints.metadata(value_network)


def test_the_docking_compare_config_decodes_with_the_token_value_network(trained, value_network, tmp_path):
    """configs/molecules/compare_docking_parp1_moses.yaml end to end: 2 molecules per method on a 4-step grid."""
    pytest.importorskip("vina")
    export, csv = trained
    config = read_config(ROOT / "configs/molecules/compare_docking_parp1_moses.yaml")
    model = config["model"]
    model.update(model=str(export), model_args={"num_steps": 4}, max_failure_fraction=None)
    model["reward"]["init_args"]["processes"] = 1
    methods = model["methods"]
    methods["best_of_n"]["init_args"]["n"] = 2
    methods["svdd_pm"]["init_args"].update(num_candidates=2, select_every=2)
    methods["svdd_mc"]["init_args"].update(num_candidates=2)
    methods["svdd_mc"]["init_args"]["value"]["init_args"]["network"] = str(value_network)
    config["data"] = {"num_samples": 2, "batch_size": 2}
    out = decode_on_tiny_csv(config, csv, tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pretrained", "best_of_n", "svdd_pm", "svdd_mc"}
    for entry in summary.values():
        assert entry["n"] == 2 and entry["reward"]["mean"] >= 0.0 and "qed" in entry
    assert summary["svdd_pm"]["per_sample"]["reward_calls"] <= 2 * 2 + 1  # 2 selections of 2 candidates, + final
    assert summary["svdd_mc"]["per_sample"]["reward_calls"] <= 2 + 1      # the last step's candidates, + final
