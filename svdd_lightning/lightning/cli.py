"""LightningCLI entry points behind ``train.py`` and ``decode.py``."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from ..paths import find
from .decoding import DecodingModule, SampleIndexDataModule
from .writer import DesignWriter

USER_ERRORS = (FileNotFoundError, ValueError, KeyError, TypeError, argparse.ArgumentError)
PARSER_KWARGS = {"exit_on_error": False}


def _condense(message: str) -> str:
    """One line from a configuration error: the cause inside jsonargparse's report of a union."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    causes = [line[2:] for line in lines if line.startswith("- ") and "NoneType" not in line
              and not re.fullmatch(r"- Expected a <class '[\w.]+'>", line)]  # a union's other branches
    if causes:
        return causes[0]
    return " ".join(line for line in lines if not line.startswith("Given value"))


def _one_line_errors(build: Callable[[], LightningCLI]) -> LightningCLI:
    """Run a CLI; a configuration or input error ends it with one line naming the problem
    (``SVDD_DEBUG=1`` shows the traceback instead)."""
    try:
        return build()
    except USER_ERRORS as err:
        if os.environ.get("SVDD_DEBUG"):
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        sys.exit(f"error: {' '.join(_condense(message).split())} (SVDD_DEBUG=1 shows the traceback)")


def _shipped_configs(args: list[str] | None) -> list[str] | None:
    """The command line with each ``--config`` path found as :func:`svdd_lightning.paths.find` does:
    relative to the working directory, else among the shipped configs. ``None`` (read ``sys.argv``)
    stays ``None``: the process's own command line is updated in place."""
    found = list(sys.argv[1:] if args is None else args)
    for i, arg in enumerate(found):
        if arg == "--config" and i + 1 < len(found):
            found[i + 1] = str(find(found[i + 1]))
        elif arg.startswith("--config="):
            found[i] = "--config=" + str(find(arg.split("=", 1)[1]))
    if args is None:
        sys.argv[1:] = found
        return None
    return found


def main_train(args: list[str] | None = None) -> LightningCLI:
    """``train.py``: any LightningModule/DataModule pair named in the config (subclass mode)."""
    args = _shipped_configs(args)
    return _one_line_errors(lambda: LightningCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_kwargs={"overwrite": True}, parser_kwargs=PARSER_KWARGS, args=args))


class DecodeCLI(LightningCLI):
    """``decode.py``: a :class:`DecodingModule` over :class:`SampleIndexDataModule`, with ``--output_dir``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--output_dir", type=str, default="results", help="where the results are written")
        parser.add_lightning_class_args(DesignWriter, "writer")
        parser.link_arguments("output_dir", "writer.output_dir")
        parser.link_arguments("output_dir", "data.output_dir")
        parser.link_arguments("output_dir", "trainer.default_root_dir")


def main_decode(args: list[str] | None = None) -> LightningCLI:
    """``decode.py``: a :class:`DecodeCLI` run."""
    args = _shipped_configs(args)
    torch.set_float32_matmul_precision("high")
    return _one_line_errors(lambda: DecodeCLI(DecodingModule, SampleIndexDataModule,
                                              save_config_kwargs={"overwrite": True}, parser_kwargs=PARSER_KWARGS, args=args))


def train_command() -> None:
    """The ``svdd-train`` console script (``train.py``)."""
    main_train()


def decode_command() -> None:
    """The ``svdd-decode`` console script (``decode.py``)."""
    main_decode()
