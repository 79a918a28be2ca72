"""LightningCLI entry points behind ``train.py`` and ``decode.py``."""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI


def main_train(args: list[str] | None = None) -> LightningCLI:
    """``train.py``: any LightningModule/DataModule pair named in the config (subclass mode)."""
    return LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                        subclass_mode_data=True, save_config_kwargs={"overwrite": True}, args=args)


class DecodeCLI(LightningCLI):
    """``decode.py``: a :class:`DecodingModule` over :class:`SampleIndexDataModule`, with ``--output_dir``."""

    def add_arguments_to_parser(self, parser) -> None:
        from .writer import DesignWriter

        parser.add_argument("--output_dir", type=str, default="results", help="where the results are written")
        parser.add_lightning_class_args(DesignWriter, "writer")
        parser.link_arguments("output_dir", "writer.output_dir")
        parser.link_arguments("output_dir", "data.output_dir")
        parser.link_arguments("output_dir", "trainer.default_root_dir")


def main_decode(args: list[str] | None = None) -> LightningCLI:
    from .decoding import DecodingModule, SampleIndexDataModule

    torch.set_float32_matmul_precision("high")
    return DecodeCLI(DecodingModule, SampleIndexDataModule, save_config_kwargs={"overwrite": True}, args=args)
