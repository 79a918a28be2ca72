"""Checkpoints cannot run code: only trusted Configurable classes are constructed, never a function,
never a pickle; damaged files and refusals are one-line errors; a user's package is made loadable by
an entry point, ``checkpoints.trust`` or ``trusted_packages``."""
from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import svdd_lightning
from svdd_lightning import checkpoints
from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion
from svdd_lightning.domains.molecules.gdss_checkpoint import convert_gdss_checkpoint
from svdd_lightning.sample_files import sample_files_for


@pytest.fixture
def saved(tmp_path) -> Path:
    model = MaskedDiffusion(DilatedConvDenoiser(4, channels=8, dilations=(1,)), "ACGT", 8, num_steps=4)
    return checkpoints.save(model.eval(), tmp_path / "m")


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_function_in_config_json_is_never_called(saved, tmp_path):
    """The attack of issue 13: config.json naming the GDSS converter with trust_pickle unpickles a file."""
    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    torch.save({"model_config": Evil()}, tmp_path / "evil.pth")
    _edit_config(saved, class_path="svdd_lightning.domains.molecules.gdss_checkpoint.convert_gdss_checkpoint",
                 init_args={"path": str(tmp_path / "evil.pth"), "output_dir": str(tmp_path / "o"), "trust_pickle": True})
    with pytest.raises(ValueError, match="names a function that is not a loadable Configurable class") as err:
        checkpoints.load(saved)
    assert str(saved) in _one_line(err)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("class_path, message", [
    ("os.system", "outside the trusted packages"),
    ("builtins.eval", "outside the trusted packages"),
    ("svdd_lightning.checkpoints.Path", "names a class that is not a loadable Configurable class"),
    ("svdd_lightning.checkpoints.torch", "names a object that is not a loadable"),
    ("svdd_lightning.diffusion.Nope", "svdd_lightning.diffusion has no 'Nope'"),
    ("svdd_lightning.no_such_module.Model", "cannot import svdd_lightning.no_such_module"),
    ("svdd_lightningevil.Model", "outside the trusted packages"),
    ("not a path", "is not a dotted name"),
    (["svdd_lightning.diffusion.MaskedDiffusion"], "is not a dotted name"),
])
def test_refused_class_paths_are_one_line(saved, class_path, message):
    _edit_config(saved, class_path=class_path)
    with pytest.raises(ValueError, match=message) as err:
        checkpoints.load(saved)
    _one_line(err)


@pytest.mark.parametrize("overrides", [{"num_steps": 4}, {"steps": 4}, None])
def test_trust_is_checked_before_the_overrides(saved, overrides):
    """An untrusted class_path is refused by the trust rule whatever model_args say, known or not."""
    _edit_config(saved, class_path="os.system", init_args={"command": "echo pwned"})
    with pytest.raises(ValueError, match="'os.system' is outside the trusted packages") as err:
        checkpoints.load(saved, overrides=overrides)
    assert "model_args" not in _one_line(err)


def test_a_nested_untrusted_class_path_is_refused_before_the_overrides(saved):
    config = json.loads((saved / "config.json").read_text())
    config["init_args"]["backbone"]["class_path"] = "subprocess.Popen"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'subprocess.Popen' is outside the trusted packages"):
        checkpoints.load(saved, overrides={"no_such_argument": 1})


def test_nested_class_paths_are_checked_too(saved):
    config = json.loads((saved / "config.json").read_text())
    config["init_args"]["backbone"]["class_path"] = "subprocess.Popen"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'subprocess.Popen' is outside the trusted packages"):
        checkpoints.load(saved)


def test_no_loadable_class_can_reach_an_unpickling_path():
    """Every Configurable class of the package takes JSON data only: no constructor argument opens a
    pickle (trust_pickle, weights_only) and no constructor calls torch.load or pickle (read from the
    source, so that no optional domain needs importing)."""
    root = Path(svdd_lightning.__file__).parent
    classes = 0
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ClassDef) and any(ast.unparse(b) == "Configurable" for b in node.bases)):
                continue
            classes += 1
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    names = {a.arg for a in item.args.args + item.args.kwonlyargs}
                    assert not names & {"trust_pickle", "weights_only", "pickle_module"}, (path, node.name)
                    source = ast.unparse(item)
                    assert "torch.load(" not in source and "pickle" not in source, (path, node.name)
    assert classes >= 15


@pytest.mark.parametrize("damage, message", [
    (lambda w: w.write_bytes(w.read_bytes()[:200]), "not a readable safetensors file"),
    (lambda w: w.write_bytes(b""), "not a readable safetensors file"),
    (lambda w: w.write_bytes(os.urandom(4096)), "not a readable safetensors file"),
    (lambda w: w.unlink(), "missing model.safetensors"),
])
def test_damaged_weight_files_are_one_line(saved, damage, message):
    damage(saved / "model.safetensors")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        checkpoints.load(saved)
    assert str(saved) in _one_line(err)


def test_weights_of_another_model_are_one_line(saved, tmp_path):
    other = MaskedDiffusion(DilatedConvDenoiser(4, channels=16, dilations=(1, 2)), "ACGT", 8, num_steps=4)
    checkpoints.save(other, tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"do not fit MaskedDiffusion .*4 unexpected tensors.*8 tensors of another shape \(e.g. backbone.embedding.weight: file \(5, 16\), model \(5, 8\)\)") as err:
        checkpoints.load(saved)
    _one_line(err)


@pytest.mark.parametrize("text, message", [
    ("{not json", "config.json is not valid JSON"),
    ("[1, 2]", "config.json has no top-level class_path"),
])
def test_broken_config_json_is_one_line(saved, text, message):
    (saved / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        checkpoints.load(saved)
    _one_line(err)


def test_wrong_init_args_name_the_class(saved):
    config = json.loads((saved / "config.json").read_text())
    config["init_args"]["seq_lenx"] = config["init_args"].pop("seq_len")
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="init_args do not fit svdd_lightning.diffusion.masked.MaskedDiffusion"):
        checkpoints.load(saved)


def test_a_file_given_as_checkpoint_directory(saved):
    with pytest.raises(ValueError, match="is a file; a checkpoint is a directory"):
        checkpoints.load(saved / "model.safetensors")


def test_overrides_from_a_command_line_arrive_as_strings(saved):
    """``--model.model_args.num_steps 32`` gives the string '32'."""
    assert checkpoints.load(saved, overrides={"num_steps": "32"}).num_steps == 32
    with pytest.raises(ValueError, match=r"model_args.num_steps: expected an integer like the checkpoint's 4, got 'abc'"):
        checkpoints.load(saved, overrides={"num_steps": "abc"})
    assert checkpoints.load(saved, overrides={"time_conditioning": "false"}).num_steps == 4


# --- a user's own package -------------------------------------------------------------------------------------
USER_PACKAGE = '''
    from torch import nn
    from svdd_lightning.checkpoints import Configurable


    class Scorer(Configurable, nn.Module):
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.linear = nn.Linear(width, 1)

        def forward(self, x):
            return self.linear(x).squeeze(-1)


    def attack(path):
        open(path, "w").write("ran")
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """An importable package ``labmodels`` outside svdd_lightning, with one Configurable network."""
    root = tmp_path / "site"
    (root / "labmodels").mkdir(parents=True)
    (root / "labmodels" / "__init__.py").write_text(textwrap.dedent(USER_PACKAGE))
    monkeypatch.syspath_prepend(str(root))
    sys.modules.pop("labmodels", None)  # docs/bring-your-own-model.md's example imports its own labmodels
    yield importlib.import_module("labmodels")
    sys.modules.pop("labmodels", None)
    checkpoints._TRUSTED.discard("labmodels")
    checkpoints._entry_point_packages.cache_clear()


def test_user_classes_load_once_their_package_is_trusted(user_package, tmp_path):
    net = user_package.Scorer(width=3).eval()
    checkpoints.save(net, tmp_path / "scorer")
    with pytest.raises(ValueError, match="'labmodels.Scorer' is outside the trusted packages.*checkpoints.trust"):
        checkpoints.load(tmp_path / "scorer")
    x = torch.randn(2, 3)
    loaded = checkpoints.load(tmp_path / "scorer", trusted_packages=["labmodels"])  # one call
    torch.testing.assert_close(loaded(x), net(x))
    checkpoints.trust("labmodels")  # the whole process
    torch.testing.assert_close(checkpoints.load(tmp_path / "scorer")(x), net(x))
    # still never a function, even in a trusted package
    _edit_config(tmp_path / "scorer", class_path="labmodels.attack", init_args={"path": str(tmp_path / "ran")})
    with pytest.raises(ValueError, match="names a function"):
        checkpoints.load(tmp_path / "scorer")
    assert not (tmp_path / "ran").exists()


def test_user_package_trusted_by_an_entry_point(user_package, tmp_path, monkeypatch):
    """What an installed package declares in its pyproject.toml:
    ``[project.entry-points."svdd_lightning.domains"] labmodels = "labmodels"``."""
    dist = tmp_path / "site" / "labmodels-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: labmodels\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[svdd_lightning.domains]\nlabmodels = labmodels\n")
    checkpoints._entry_point_packages.cache_clear()
    assert "labmodels" in checkpoints.trusted_packages()
    net = user_package.Scorer(width=2).eval()
    checkpoints.save(net, tmp_path / "scorer")
    assert isinstance(checkpoints.load(tmp_path / "scorer"), user_package.Scorer)


def test_a_trusted_package_cannot_launder_an_untrusted_class(user_package, tmp_path):
    """``svdd_lightning.x.Y`` re-exporting a class defined elsewhere is judged by where the class lives."""
    import svdd_lightning.checkpoints as module

    module.Scorer = user_package.Scorer
    try:
        checkpoints.save(user_package.Scorer(width=2), tmp_path / "s")
        _edit_config(tmp_path / "s", class_path="svdd_lightning.checkpoints.Scorer")
        with pytest.raises(ValueError, match="is labmodels.Scorer, which is outside the trusted packages"):
            checkpoints.load(tmp_path / "s")
    finally:
        del module.Scorer


def test_trust_refuses_a_non_package_name():
    with pytest.raises(ValueError, match="not a dotted package name"):
        checkpoints.trust("labmodels; rm -rf /")


# --- GDSS conversion: torch 2.13 words blocked modules differently -------------------------------------------
def test_gdss_refusal_covers_blocked_modules(tmp_path):
    """torch 2.13: 'Trying to load unsupported GLOBAL posix.getcwd whose module posix is blocked'."""
    class Blocked:
        def __reduce__(self):
            return (os.getcwd, ())

    src = tmp_path / "blocked.pth"
    torch.save({"model_config": Blocked()}, src)
    with pytest.raises(ValueError, match=r"holds pickled objects \(posix.getcwd\).*--trust-pickle") as err:
        convert_gdss_checkpoint(src, tmp_path / "out")
    _one_line(err)
    # trusted, the file is unpickled (getcwd is harmless) and then judged as a GDSS checkpoint
    with pytest.raises(ValueError, match="has no 'params_x'"):
        convert_gdss_checkpoint(src, tmp_path / "out", trust_pickle=True)


class _NotConfigurable(nn.Module):
    pass


def test_save_refuses_a_module_that_cannot_be_rebuilt(tmp_path):
    with pytest.raises(TypeError, match="not Configurable"):
        checkpoints.save(_NotConfigurable(), tmp_path / "x")


def test_trusted_packages_on_the_command_line_apply_before_any_object_is_built(user_package, tmp_path):
    from svdd_lightning.lightning.cli import main_decode

    from test_output_integrity import write_config
    from tiny_dna import build_tiny_checkpoints

    config = write_config(build_tiny_checkpoints(tmp_path / "tiny"), tmp_path / "decode.yaml")
    net = user_package.Scorer(width=2).eval()
    checkpoints.save(net, tmp_path / "scorer")
    # the reward's oracle is the user's network: loadable only once --trusted_packages has been applied
    args = ["predict", "--config", str(config), "--model.reward.init_args.checkpoint",
            str(tmp_path / "scorer"), "--data.num_samples", "0"]
    with pytest.raises(SystemExit, match="'labmodels.Scorer' is outside the trusted packages"):
        main_decode(args)
    with pytest.raises(SystemExit) as exit_:
        main_decode([*args, "--trusted_packages", "[labmodels]"])
    assert "labmodels" in checkpoints.trusted_packages()
    assert "outside the trusted packages" not in exit_.value.code


def test_the_example_package_is_loadable_through_its_entry_point():
    """examples/peptide_svdd declares ``[project.entry-points."svdd_lightning.domains"]``; once installed
    (CI installs it), its shipped checkpoints load with no trust given in code."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("peptide-svdd-example")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("examples/peptide_svdd is not installed (.ci/run installs it)")
    checkpoints._entry_point_packages.cache_clear()
    assert "peptide_svdd" in checkpoints.trusted_packages()
    model = checkpoints.load(Path(__file__).parents[1] / "examples/peptide_svdd/checkpoints/pretrained")
    assert type(model).__module__ == "peptide_svdd.model" and model.num_steps == 24
    assert type(sample_files_for(model)).__name__ == "FastaFiles"


def test_a_checkpoint_naming_a_moved_class_loads_the_class_under_its_new_name(tmp_path, monkeypatch):
    """A class that moved (svdd_lightning.renamed) still loads from checkpoints written before the move."""
    import shutil

    from svdd_lightning import renamed

    shutil.copytree(Path(__file__).parents[1] / "checkpoints/dna/mdlm", tmp_path / "old")
    config = json.loads((tmp_path / "old/config.json").read_text())
    assert config["class_path"] == "svdd_lightning.diffusion.masked.MaskedDiffusion"
    config["class_path"] = "svdd_lightning.masked.MaskedDiffusion"
    (tmp_path / "old/config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot import svdd_lightning.masked"):
        checkpoints.load(tmp_path / "old")
    monkeypatch.setitem(renamed.RENAMED, "svdd_lightning.masked.MaskedDiffusion",
                        "svdd_lightning.diffusion.masked.MaskedDiffusion")
    assert isinstance(checkpoints.load(tmp_path / "old"), MaskedDiffusion)
