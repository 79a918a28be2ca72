"""LightningCLI entry points behind ``train.py`` and ``decode.py``."""
from __future__ import annotations

import argparse
import atexit
import importlib
import inspect
import os
import pickle
import pkgutil
import re
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from jsonargparse import ActionYesNo, DefaultHelpFormatter
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from .. import checkpoints
from ..paths import find
from ..threads import ThreadSetting
from ..yaml_keys import refuse_duplicate_keys
from .folders import ReportedByRankZero, write_error

USER_ERRORS = (FileNotFoundError, ValueError, KeyError, TypeError, argparse.ArgumentError, MisconfigurationException,
               pickle.UnpicklingError)
PARSER_KWARGS = {"exit_on_error": False}


def _trainer_defaults() -> dict:
    """Callbacks every run gets (not configurable): torch threads per process from the available cores."""
    return {"callbacks": [ThreadSetting()]}


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
        if isinstance(err, MisconfigurationException):
            message = f"trainer: {message}"
        _end_process_group()
        if isinstance(err, ReportedByRankZero):
            sys.exit(1)
        sys.exit(f"error: {' '.join(_condense(message).split())} (SVDD_DEBUG=1 shows the traceback)")


def _end_process_group() -> None:
    """Close a DDP process group: left open at exit, gloo's threads can abort the process ("terminate
    called without an active exception") after the work has succeeded. Registered with ``atexit``, so
    that a command running several fits in one process (``finetune.py``) keeps its group between them."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


atexit.register(_end_process_group)


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


# What each command lists in --help: the framework's own modules, and every module of each domain package
# registered in the ``svdd_lightning.domains`` entry-point group (the built-in domains and plug-ins alike; a
# module whose extra is not installed is skipped), so that their classes appear among the known subclasses.
TRAINING_MODULES = ("svdd_lightning.lightning.training", "svdd_lightning.lightning.rollouts",
                    "svdd_lightning.lightning.finetuning")
DECODING_MODULES = ("svdd_lightning.diffusion", "svdd_lightning.evaluation")


def _import_available(modules: tuple[str, ...]) -> None:
    """Import ``modules`` and every module of the registered domain packages, skipping those whose
    domain's extra is not installed."""
    for module in (*modules, *_domain_modules()):
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def _domain_modules() -> list[str]:
    """Every module of the packages in the ``svdd_lightning.domains`` entry-point group."""
    names = []
    for entry in entry_points(group=checkpoints.ENTRY_POINT_GROUP):
        try:
            package = importlib.import_module(entry.value)
        except ImportError:
            continue
        names.append(package.__name__)
        if hasattr(package, "__path__"):
            names += [info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return names


def _parameters(cls: type) -> list[str]:
    """``name=default: description`` of each constructor parameter, from the class's Args section."""
    try:
        import docstring_parser  # installed with jsonargparse[signatures]
        described = {p.arg_name: " ".join(p.description.split())
                     for p in docstring_parser.parse(inspect.getdoc(cls) or "").params if p.description}
    except ImportError:
        described = {}
    lines = []
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = "" if parameter.default is parameter.empty else f"={parameter.default!r}"
        lines.append(f"{name}{default}" + (f": {described[name]}" if name in described else ""))
    return lines


def _listing(title: str, base: type, parameters: bool = False) -> str:
    """``title`` and one entry per imported subclass of ``base`` in svdd_lightning: its class path, the
    first sentence of its docstring and, with ``parameters``, its constructor's parameters."""
    seen, entries, todo = set(), [], list(base.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo.extend(cls.__subclasses__())
        path = f"{cls.__module__}.{cls.__qualname__}"
        if path in seen or not path.startswith("svdd_lightning.") or cls.__name__.startswith("_") or inspect.isabstract(cls):
            continue
        seen.add(path)
        paragraph = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
        summary = re.split(r"(?<!e\.g)(?<!i\.e)(?<! al)\.\s", paragraph)[0].rstrip(".") + "."
        lines = [f"  {path}", f"      {summary}"] + [f"        {p}" for p in (_parameters(cls) if parameters else [])]
        entries.append((path, "\n".join(lines)))
    return f"{title}:\n" + "\n".join(entry for _, entry in sorted(entries))


class _ListingFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with the description and the class listing kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _decode_epilog() -> str:
    from ..core.decoders import Decoder
    from ..core.model import DiffusionModel
    from ..core.reward import Reward
    from ..core.value import Value

    sections = [_listing("Decoding methods (model.methods: {name: {class_path, init_args}})", Decoder, True),
                _listing("Values of SVDD and SMC (value)", Value, True),
                _listing("Rewards and evaluation scores (model.reward, model.metrics, set_metrics)", Reward, True),
                _listing("Diffusion models (model.model: a checkpoint directory, or a class_path)", DiffusionModel, True)]
    return ("\n\n".join(sections) + "\n\nAlso as command-line help: --model.reward.help CLASS, "
            "--model.model.help CLASS; and in docs/methods.md and the API reference (mkdocs).")


class _TrustingCLI(LightningCLI):
    """``--trusted_packages``: packages whose Configurable classes checkpoints may construct (see
    :func:`svdd_lightning.checkpoints.trust`), applied before any object is built; ``--ckpt_path``
    must be a safe Lightning checkpoint (:func:`check_ckpt_path`) before it is read."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--trusted_packages", type=list[str], default=[],
                            help="packages whose classes checkpoints may construct, besides svdd_lightning and "
                                 "those declared by entry points (group svdd_lightning.checkpoints)")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        checkpoints.trust(*config.get("trusted_packages", []))

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path``'s hyperparameters before anything else: check the file first."""
        if self.config.get("subcommand"):
            check_ckpt_path(self.config[self.config.subcommand].get("ckpt_path"))
        super()._parse_ckpt_path()


class TrainCLI(_TrustingCLI):
    """``train.py``: any LightningModule/DataModule pair named in the config (subclass mode).

    Before fitting, every ``ExportBest`` folder is checked (writable; not holding a model unless the
    run resumes or ``overwrite`` is set), and the checkpoint callbacks keep ``last.ckpt`` in a fixed
    folder (``default_root_dir/checkpoints``), so that ``--ckpt_path last`` resumes.
    """

    def before_fit(self) -> None:
        from .training import ExportBest

        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        trainer = self.trainer
        for callback in trainer.callbacks:
            if isinstance(callback, ExportBest):
                callback.check_directory(resuming=ckpt_path is not None)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                if callback.save_last is None:  # an explicit false is kept
                    callback.save_last = True
                if callback.dirpath is None:
                    callback.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")


def check_ckpt_path(path: str | None) -> None:
    """A ``--ckpt_path`` file must be a torch zip archive holding no pickled code (one line otherwise)."""
    if path is None or path in ("last", "best", "hpc") or "://" in str(path):
        return
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ckpt_path {path}: no such file (or 'last' to resume the latest run)")
    if not zipfile.is_zipfile(file):
        raise ValueError(f"ckpt_path {path} is not a Lightning checkpoint: not a torch zip archive (truncated, "
                         f"empty or another kind of file)")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception as err:  # a damaged archive
        raise ValueError(f"ckpt_path {path} is not a readable Lightning checkpoint ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]})") from None
    if unsafe:
        raise ValueError(f"ckpt_path {path} holds pickled objects ({', '.join(unsafe[:3])}) that are not loaded, "
                         f"for safety: resume only from checkpoints train.py wrote")


def main_train(args: list[str] | None = None) -> LightningCLI:
    """``train.py``: any LightningModule/DataModule pair named in the config (subclass mode)."""
    args = _shipped_configs(args)
    refuse_duplicate_keys()
    _import_available(TRAINING_MODULES)
    epilog = "\n\n".join([_listing("Training modules (model: {class_path, init_args})", L.LightningModule),
                           _listing("DataModules (data)", L.LightningDataModule)])
    epilog += "\n\nTheir parameters, with their descriptions: --model.help CLASS, --data.help CLASS"
    parser_kwargs = {**PARSER_KWARGS, "formatter_class": _ListingFormatter,
                     "fit": {**PARSER_KWARGS, "epilog": epilog}}
    return _one_line_errors(lambda: TrainCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_kwargs={"overwrite": True}, parser_kwargs=parser_kwargs,
        trainer_defaults=_trainer_defaults(), args=args))


CKPT_PATH_MESSAGE = ("decode.py predict takes no --ckpt_path: name the pretrained model's checkpoint directory in "
                     "model.model (--model.model DIR), a value network in NetworkValue's network (a directory "
                     "written by train.py fit); to resume an interrupted run, run the same command with the same "
                     "--output_dir")


class SaveDecodeConfig(SaveConfigCallback):
    """Writes ``config.yaml`` into the output folder once the writer has checked and locked it and
    compared the settings (so a refused run leaves the folder's config.yaml describing what was run)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pass

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            super().setup(trainer, pl_module, "predict")
        except OSError as err:  # a full disk: one line naming the folder
            raise write_error(Path(trainer.default_root_dir), err) from None


class DecodeCLI(_TrustingCLI):
    """``decode.py``: a :class:`DecodingModule` over :class:`SampleIndexDataModule`, with ``--output_dir``
    and ``--overwrite``; ``predict`` is its only subcommand and it has no optimizer options."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"predict": {"model", "dataloaders", "datamodule", "weights_only"}}

    def add_arguments_to_parser(self, parser) -> None:
        from .progress import DecodeProgress
        from .writer import DesignWriter

        super().add_arguments_to_parser(parser)
        parser.add_argument("--output_dir", type=str, default="results", help="where the results are written")
        parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                            help="discard the folder's results of methods whose settings changed and decode them again")
        parser.add_lightning_class_args(DesignWriter, "writer")
        parser.add_lightning_class_args(DecodeProgress, "progress")
        parser.link_arguments("output_dir", "writer.output_dir")
        parser.link_arguments("overwrite", "writer.overwrite")
        parser.link_arguments("output_dir", "data.output_dir")
        parser.link_arguments("output_dir", "trainer.default_root_dir")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        if self.config.get("predict", {}).get("ckpt_path") is not None:
            raise ValueError(CKPT_PATH_MESSAGE)


def main_decode(args: list[str] | None = None) -> LightningCLI:
    """``decode.py``: a :class:`DecodeCLI` run."""
    from .decoding import DecodingModule, SampleIndexDataModule

    args = _shipped_configs(args)
    refuse_duplicate_keys()
    _import_available(DECODING_MODULES)
    torch.set_float32_matmul_precision("high")
    # (jsonargparse gives a subcommand its parent's formatter)
    parser_kwargs = {**PARSER_KWARGS, "formatter_class": _ListingFormatter, "predict": {
        **PARSER_KWARGS, "description": "Decode with every method of the config and write the comparison (docs/cli.md).",
        "epilog": _decode_epilog()}}
    return _one_line_errors(lambda: DecodeCLI(DecodingModule, SampleIndexDataModule, auto_configure_optimizers=False,
                                              save_config_callback=SaveDecodeConfig,
                                              save_config_kwargs={"overwrite": True}, parser_kwargs=parser_kwargs,
                                              trainer_defaults=_trainer_defaults(), args=args))


def train_command() -> None:
    """The ``svdd-train`` console script (``train.py``)."""
    main_train()


def decode_command() -> None:
    """The ``svdd-decode`` console script (``decode.py``)."""
    main_decode()
