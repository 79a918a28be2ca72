"""The bad inputs a new user tries (issue 13.6): each is one line naming the field or file and the
problem, before any work starts; never a traceback. Then training safety (issue 13.7): exports under a
temporary name, best score kept in the Lightning checkpoint, ``--ckpt_path last`` resumes.
Commands run in this process on tiny random checkpoints."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from svdd_lightning import checkpoints
from svdd_lightning.lightning.cli import main_decode, main_train

from test_output_integrity import write_config
from tiny_dna import LENGTH, build_tiny_checkpoints, write_regions
from svdd_lightning.yaml_keys import read_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    paths = build_tiny_checkpoints(root / "ckpt")
    paths["file"] = root / "a_file"
    paths["file"].write_text("not a folder")
    paths["config"] = write_config(paths, root / "decode.yaml")
    return paths


def _damaged(tiny: dict[str, Path], tmp_path: Path, damage) -> str:
    copy = tmp_path / "model"
    shutil.copytree(tiny["mdlm"], copy)
    damage(copy)
    return str(copy)


def _set_config(directory: Path, config: dict) -> None:
    (directory / "config.json").write_text(json.dumps(config))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _write_evil(path: Path) -> str:
    torch.save({"state_dict": _Evil()}, path)
    return str(path)


W = "model.safetensors"
DECODE_CASES = {
    # the output folder
    "output under a file": (lambda t, p: ["--output_dir", str(t["file"] / "out")], "cannot be created: a parent of it is a file"),
    "output is a file": (lambda t, p: ["--output_dir", str(t["file"])], "is a file, not a folder"),
    # the model checkpoint
    "no model folder": (lambda t, p: ["--model.model", str(p / "none")], "missing config.json"),
    "model folder without weights": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: (d / W).unlink())],
                                     "missing model.safetensors"),
    "truncated weights": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: (d / W).write_bytes((d / W).read_bytes()[:100]))],
                          "model.safetensors are not a readable safetensors file"),
    "empty weights": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: (d / W).write_bytes(b""))],
                      "not a readable safetensors file"),
    "random weights": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: (d / W).write_bytes(os.urandom(999)))],
                       "not a readable safetensors file"),
    "weights of another model": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: shutil.copy(t["reward"] / W, d / W))],
                                 "do not fit MaskedDiffusion"),
    "config.json not JSON": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: (d / "config.json").write_text("{"))],
                             "config.json is not valid JSON"),
    "config.json names a function": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: _set_config(d, {
        "class_path": "svdd_lightning.domains.molecules.gdss_checkpoint.convert_gdss_checkpoint",
        "init_args": {"path": "x.pth", "output_dir": "o", "trust_pickle": True}}))], "names a function"),
    "config.json names os.system": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: _set_config(d, {
        "class_path": "os.system", "init_args": {"command": "echo pwned"}}))], "outside the trusted packages"),
    "config.json names os.system, with model_args": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: _set_config(d, {
        "class_path": "os.system", "init_args": {"command": "echo pwned"}})), "--model.model_args.num_steps", "4"],
        "'os.system' is outside the trusted packages"),
    "config.json names os.system, model_args null": (lambda t, p: ["--model.model", _damaged(t, p, lambda d: _set_config(d, {
        "class_path": "os.system", "init_args": {"command": "echo pwned"}})), "--model.model_args", "null"],
        "'os.system' is outside the trusted packages"),
    "model_args not a number": (lambda t, p: ["--model.model_args.num_steps", "many"],
                                "model_args.num_steps: expected an integer"),
    "model_args unknown": (lambda t, p: ["--model.model_args.steps", "4"], "are not constructor arguments"),
    "model_args zero steps": (lambda t, p: ["--model.model_args.num_steps", "0"], "num_steps must be >= 1"),
    # rewards, methods, data
    "infinite reward floor": (lambda t, p: ["--model.reward_floor", "1e999"], "reward_floor must be a finite number"),
    "reward checkpoint missing": (lambda t, p: ["--model.reward.init_args.checkpoint", str(p / "none")],
                                  "missing config.json"),
    "reward alphabet": (lambda t, p: ["--model.reward.init_args.alphabet", "ACGX"], "cannot read the model's symbols"),
    "reward output": (lambda t, p: ["--model.reward.init_args.output", "prob"], "OracleReward.output must be"),
    "Best-of-N of zero": (lambda t, p: ["--model.methods.best_of_n.init_args.n", "0"], "BestOfN.n must be >= 1"),
    "misspelt argument": (lambda t, p: ["--model.methods.best_of_n.init_args.m", "3"], "'m' is not accepted"),
    "unknown method class": (lambda t, p: ["--model.methods.best_of_n.class_path", "svdd_lightning.BestOfM"],
                             "svdd_lightning.BestOfM"),
    "zero samples": (lambda t, p: ["--data.num_samples", "0"], "data.num_samples must be >= 1"),
    "samples not a number": (lambda t, p: ["--data.num_samples", "many"], 'Parser key "data.num_samples"'),
    "zero batch": (lambda t, p: ["--data.batch_size", "0"], "data.batch_size must be >= 1"),
    "seed not a number": (lambda t, p: ["--model.seed", "x"], 'Parser key "model.seed"'),
    # the trainer and the command
    "no GPU": (lambda t, p: ["--trainer.accelerator", "gpu"], "trainer: No supported gpu backend found"),
    "bad precision": (lambda t, p: ["--trainer.precision", "17"], "Expected a typing.Literal"),
    "config file missing": (lambda t, p: ["--config", str(p / "none.yaml")], "File does not exist"),
    "config file malformed": (lambda t, p: ["--config", str(_text(p / "bad.yaml", "model: [unclosed\n"))],
                              "Problems parsing config"),
    "pickle as ckpt_path": (lambda t, p: ["--ckpt_path", _write_evil(p / "evil.ckpt")],
                            "decode.py predict takes no --ckpt_path"),  # never opened; train.py's check is below
    "trusted package not a name": (lambda t, p: ["--trusted_packages", "[os; rm]"], "not a dotted package name"),
}


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_bad_input_is_one_line_before_any_work(tiny, tmp_path, case, capfd):
    make_args, fragment = DECODE_CASES[case]
    out = tmp_path / "out"
    args = ["predict", "--config", str(tiny["config"]), "--output_dir", str(out), *make_args(tiny, tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main_decode(args)
    message = exit_.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    assert fragment in message, message
    assert not (out / "parts").exists() and not (out / "config.yaml").exists()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out and "pwned" not in captured.out


def test_decode_refuses_a_repeated_key_in_a_config(tiny, tmp_path, capfd):
    overlay = _text(tmp_path / "seeds.yaml", "model:\n  seed: 0\n  seed: 1\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main_decode(["predict", "--config", str(tiny["config"]), "--config", str(overlay), "--output_dir", str(out)])
    assert exit_.value.code == (f"error: {overlay}: key 'seed' appears twice (lines 2 and 3); keep one "
                                f"(SVDD_DEBUG=1 shows the traceback)")
    assert not out.exists() and "Traceback" not in "".join(capfd.readouterr())


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a folder nobody may create files in")
def test_decode_into_an_unwritable_folder(tiny):
    with pytest.raises(SystemExit, match=r"error: output_dir /sys/svdd_out is not writable"):
        main_decode(["predict", "--config", str(tiny["config"]), "--output_dir", "/sys/svdd_out"])


# --- training ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regions(tmp_path_factory) -> Path:
    return write_regions(tmp_path_factory.mktemp("train_data") / "regions.tsv")


def fit(regions: Path, root: Path, *extra: str) -> str | None:
    """``train.py fit`` on the DNA pretraining config, tiny: None on success, else the one-line error."""
    args = ["fit", "--config", "configs/dna/pretrain.yaml", "--data.init_args.path", str(regions),
            "--data.init_args.batch_size", "16", "--model.init_args.model.init_args.seq_len", str(LENGTH),
            "--model.init_args.model.init_args.backbone.init_args.channels", "8",
            "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(root / "runs"), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.callbacks.init_args.directory", str(root / "export"),
            *extra]
    try:
        main_train(args)
    except SystemExit as exit_:
        assert isinstance(exit_.code, str) and "\n" not in exit_.code, exit_.code
        return exit_.code
    return None


def test_training_exports_atomically_keeps_its_best_score_and_resumes_from_last(regions, tmp_path):
    assert fit(regions, tmp_path, "--trainer.max_steps", "4") is None
    last = tmp_path / "runs" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    export_state = [v for k, v in state["callbacks"].items() if k.startswith("ExportBest")]
    first = checkpoints.metadata(tmp_path / "export")
    assert state["global_step"] == 4 and export_state[0]["best"] == first["val/nelbo_bpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "runs"]  # no temporary folder left

    # a second run would replace that model: refused before any work, unless it resumes
    assert "already holds a model: set overwrite: true" in fit(regions, tmp_path, "--trainer.max_steps", "8")
    assert fit(regions, tmp_path, "--trainer.max_steps", "8", "--ckpt_path", "last") is None
    assert torch.load(last, weights_only=True)["global_step"] == 8
    second = checkpoints.metadata(tmp_path / "export")
    assert second["val/nelbo_bpt"] <= first["val/nelbo_bpt"]  # exported only if it beat the restored best
    assert second["global_step"] in (4, 6, 8) and isinstance(checkpoints.load(tmp_path / "export"), torch.nn.Module)
    assert fit(regions, tmp_path, "--trainer.max_steps", "2", "--trainer.callbacks.init_args.overwrite", "true") is None


def _truncated(path: Path) -> str:
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    return str(path)


TRAIN_CASES = {
    "export under a file": (lambda p: ["--trainer.callbacks.init_args.directory", str(_text(p / "f", "x") / "e")],
                            "ExportBest.directory's parent"),
    "export is a file": (lambda p: ["--trainer.callbacks.init_args.directory", str(_text(p / "f", "x"))],
                         "ExportBest.directory"),
    "ckpt_path missing": (lambda p: ["--ckpt_path", str(p / "none.ckpt")], "ckpt_path"),
    "ckpt_path truncated": (lambda p: ["--ckpt_path", _truncated(p / "cut.ckpt")], "is not a Lightning checkpoint"),
    "ckpt_path not a checkpoint": (lambda p: ["--ckpt_path", str(_text(p / "notes.ckpt", "hello"))],
                                   "not a torch zip archive"),
    "ckpt_path malicious pickle": (lambda p: ["--ckpt_path", _write_evil(p / "evil.ckpt")], "holds pickled objects"),
    "monitor not logged": (lambda p: ["--trainer.callbacks.init_args.monitor", "val/loss"],
                           "ExportBest.monitor: 'val/loss' is not logged"),
    "export mode": (lambda p: ["--trainer.callbacks.init_args.mode", "best"], "ExportBest.mode must be"),
    "export over the run folder": (lambda p: ["--trainer.callbacks.init_args.directory", str(p / "runs")],
                                   "holds trainer.default_root_dir"),
    "data missing": (lambda p: ["--data.init_args.path", str(p / "none.tsv")], "data.path"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_bad_input_is_one_line_before_training(regions, tmp_path, case, capfd):
    make_args, fragment = TRAIN_CASES[case]
    message = fit(regions, tmp_path, "--trainer.max_steps", "2", *make_args(tmp_path))
    assert message is not None and message.startswith("error: ") and fragment in message, message
    assert not list(tmp_path.glob("runs/**/*.ckpt")) and not (tmp_path / "export").exists()  # nothing trained
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "pwned" not in captured.out


def test_shipped_training_configs_export_under_runs():
    """A smoke-test fit cannot overwrite a shipped network: every ExportBest of configs/ writes under runs/."""
    found = 0
    for path in Path("configs").rglob("*.yaml"):
        for callback in (read_config(path).get("trainer") or {}).get("callbacks") or []:
            if callback["class_path"].endswith("ExportBest"):
                found += 1
                assert callback["init_args"]["directory"].startswith("runs/"), path
    assert found >= 15
