"""Packaging: the extras' one-line import errors, shipped files found from any working directory,
pyproject's console scripts and wheel contents. (A fresh-venv ``pip install "./[dna]"`` is too slow
for CI: docs/getting-started.md says how it was checked by hand.)"""
import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from svdd_lightning import checkpoints, paths
from svdd_lightning.lightning.cli import main_decode

ROOT = Path(__file__).resolve().parents[1]

# import this with its extra's top package blocked -> the extra that one line must name
DOMAIN_IMPORTS = {
    "svdd_lightning.domains.molecules": ("rdkit", "molecules"),
    "svdd_lightning.domains.images": ("diffusers", "images"),
    "svdd_lightning.domains.utr.rewards:MinimumFreeEnergy": ("RNA", "rna"),
    "svdd_lightning.domains.dna.motifs:JasparMotifReward": ("pyjaspar", "dna"),
}

PROBE = """
import importlib, json, sys
import svdd_lightning, svdd_lightning.lightning.cli, svdd_lightning.lightning.training
import svdd_lightning.lightning.rollouts, svdd_lightning.domains.sequences.oracle
# (transformers is left out: lightning's torchmetrics imports it when it is installed)
results = {"core imports": [m for m in ("rdkit", "diffusers", "RNA", "pyjaspar", "torch_geometric") if m in sys.modules]}
for target, (blocked, extra) in json.loads(sys.argv[1]).items():
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == blocked or k.startswith(blocked + ".")}
    sys.modules[blocked] = None
    module, _, name = target.partition(":")
    try:
        obj = importlib.import_module(module)
        if name:
            getattr(obj, name)()
        results[target] = "no error"
    except ImportError as err:
        results[target] = str(err)
    del sys.modules[blocked]
    sys.modules.update(saved)
print(json.dumps(results))
"""


def test_a_missing_extra_is_named_in_one_line_and_the_core_imports_no_domain():
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(DOMAIN_IMPORTS)], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    results = json.loads(out.strip().splitlines()[-1])
    assert results["core imports"] == []
    for target, (_, extra) in DOMAIN_IMPORTS.items():
        message = results[target]
        assert "\n" not in message and f"svdd-lightning[{extra}]" in message, (target, message)


def test_shipped_files_are_found_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.find("checkpoints/dna/mdlm") == ROOT / "checkpoints/dna/mdlm"
    assert type(checkpoints.load("checkpoints/dna/oracle_reward")).__name__ == "EnformerStyleClassifier"
    # a file of the user's own at the same relative path wins; a missing path stays as written
    (tmp_path / "assets/dna").mkdir(parents=True)
    (tmp_path / "assets/dna/hepg2_test.fasta.gz").write_bytes(b"")
    assert paths.find("assets/dna/hepg2_test.fasta.gz") == Path("assets/dna/hepg2_test.fasta.gz")
    assert paths.find("checkpoints/nothing/here") == Path("checkpoints/nothing/here")


def test_a_shipped_config_runs_from_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    with pytest.raises(SystemExit) as exit_:
        main_decode(["predict", "--config", "configs/dna/compare.yaml", "--data.num_samples", "2",
                     "--print_config"])
    assert exit_.value.code in (0, None)
    assert "num_samples: 2" in capsys.readouterr().out


def test_pyproject_names_what_exists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert {"dna", "rna", "molecules", "images", "all"} <= set(extras)
    for script in project["project"]["scripts"].values():
        module, _, name = script.partition(":")
        assert callable(getattr(importlib.import_module(module), name))
    shipped = project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for source, target in shipped.items():
        assert (ROOT / source).is_dir() and target == f"svdd_lightning/_shipped/{source}"
    assert set(shipped) == set(paths.SHIPPED)
    # every upper bound is there: each requirement of the core and the extras has a "<"
    requirements = project["project"]["dependencies"] + [r for name, rs in extras.items() if name != "all" for r in rs]
    assert all("<" in r for r in requirements), [r for r in requirements if "<" not in r]
