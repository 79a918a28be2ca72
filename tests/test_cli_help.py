"""What train.py and decode.py tell a user: their --help listings and the message for --ckpt_path."""
import subprocess
import sys
from pathlib import Path

import pytest

from svdd_lightning.lightning.cli import main_decode

ROOT = Path(__file__).resolve().parents[1]

# train.py's help first, in a fresh process: the decode modules must not be imported by it
HELP = """
import contextlib, io, sys
from svdd_lightning.lightning.cli import main_decode, main_train
for name, main, args in [("train", main_train, ["fit", "--help"]), ("decode", main_decode, ["--help"]),
                         ("predict", main_decode, ["predict", "--help"]),
                         ("reward", main_decode, ["predict", "--model.reward.help",
                                                  "svdd_lightning.domains.sequences.oracle.OracleReward"])]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(args)
        except SystemExit:
            pass
    print(f"===== {name}")
    print(out.getvalue())
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", HELP], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    sections = out.split("===== ")[1:]
    return {s.split("\n", 1)[0]: s.split("\n", 1)[1] for s in sections}


def test_train_help_lists_training_modules_and_datamodules_only(helps):
    text = helps["train"]
    for name in ("ValueRegression", "MaskedDiffusionPretraining", "RolloutDataModule", "DNARegionsDataModule",
                 "UTRDataModule"):
        assert name in text, name
    assert "DecodingModule" not in text and "SampleIndexDataModule" not in text


def test_decode_offers_predict_only_without_optimizer_options(helps):
    assert "{predict}" in helps["decode"] and "fit" not in helps["decode"].split("subcommands:")[1]
    assert "--optimizer" not in helps["predict"] and "--lr_scheduler" not in helps["predict"]


def test_decode_help_lists_shipped_classes_with_parameter_descriptions(helps):
    text = helps["predict"]
    for path in ("svdd_lightning.core.decoders.SVDD", "svdd_lightning.core.value.NetworkValue",
                 "svdd_lightning.domains.sequences.oracle.OracleReward", "svdd_lightning.domains.utr.rewards.MinimumFreeEnergy",
                 "svdd_lightning.diffusion.masked.MaskedDiffusion"):
        assert f"  {path}\n      " in text, path  # listed with its summary on the next line
    assert "num_candidates=10: M, candidates drawn" in text  # SVDD's parameters with their descriptions
    assert "the token order the network was trained on" in helps["reward"]  # OracleReward's alphabet


def test_decode_ckpt_path_says_what_to_do_instead(monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    with pytest.raises(SystemExit) as exit_:
        main_decode(["predict", "--config", str(ROOT / "configs/dna/compare.yaml"), "--ckpt_path", "x.ckpt"])
    message = str(exit_.value.code)
    assert "takes no --ckpt_path" in message and "--model.model DIR" in message and "\n" not in message


def test_value_network_checkpoint_path_is_not_searched_among_torch_modules(monkeypatch):
    """``NetworkValue.network`` takes a checkpoint folder as a plain string: the parser must not look the
    path up as a class name among every ``nn.Module`` subclass (that search cost ~0.13 s per parse of the
    value, repeated for every method that uses it)."""
    import jsonargparse._typehints as typehints
    from jsonargparse import ArgumentParser
    from torch import nn

    from svdd_lightning.core.value import Value

    searched = []
    original = typehints.get_all_subclass_paths
    monkeypatch.setattr(typehints, "get_all_subclass_paths",
                        lambda cls, **kwargs: searched.append(cls) or original(cls, **kwargs))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Value, "value")
    config = parser.parse_args(["--value", '{"class_path": "svdd_lightning.NetworkValue", '
                                           '"init_args": {"network": "checkpoints/dna/value_mc"}}'])
    assert config.value.init_args.network == "checkpoints/dna/value_mc"
    assert nn.Module not in searched
