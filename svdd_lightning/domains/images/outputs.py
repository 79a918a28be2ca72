"""A decoding run's image files: one PNG per sample and a grid of each method's first samples.

Samples are float tensors (C, H, W) in [0, 1] with C = 1 (grayscale) or 3 (RGB). They are stored in
the parts files as base64 lossless PNGs of their 8-bit pixels (round(x * 255)), so a run's outputs
hold the 8-bit images: decoding gives the pixel values / 255.
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...evaluation import quantile_summary
from ...sample_files import SampleFiles


def to_pil(sample: torch.Tensor) -> Image.Image:
    """The 8-bit grayscale (C = 1) or RGB (C = 3) image of a (C, H, W) tensor in [0, 1]."""
    if sample.ndim != 3 or sample.shape[0] not in (1, 3):
        raise ValueError(f"an image sample is a (C, H, W) tensor with C = 1 or 3, got shape {tuple(sample.shape)}")
    pixels = (sample.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).squeeze(2).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    """The (C, H, W) float32 tensor, pixel values / 255, of an 8-bit grayscale or RGB image."""
    pixels = torch.from_numpy(np.array(image))
    return (pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)).float() / 255


class ImageFiles(SampleFiles):
    """``<method>/<index>.png`` per sample (index zero-padded to 5 digits; samples.csv's ``image``
    column holds that path relative to the output directory) and ``<method>_grid.png``: the method's
    first ``grid_size`` samples by index, ``per_row`` per row, each with its reward underneath."""

    column = "image"

    def __init__(self, grid_size: int = 64, per_row: int = 8) -> None:
        if grid_size < 1 or per_row < 1:
            raise ValueError(f"ImageFiles.grid_size and per_row must be >= 1, got {grid_size} and {per_row}")
        self.grid_size, self.per_row = grid_size, per_row

    def encode(self, sample: torch.Tensor) -> str:
        buffer = io.BytesIO()
        to_pil(sample).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def decode(self, stored: str) -> torch.Tensor:
        with Image.open(io.BytesIO(base64.b64decode(stored))) as image:
            return from_pil(image)

    def csv_value(self, method: str, row: dict) -> str:
        return f"{method}/{row['index']:05d}.png"

    def write(self, output_dir: Path, method: str, rows: list[dict]) -> None:
        (output_dir / method).mkdir(exist_ok=True)
        for r in rows:
            to_pil(r["sample"]).save(output_dir / self.csv_value(method, r))
        self.write_grid(output_dir / f"{method}_grid.png", f"{method}: first {min(len(rows), self.grid_size)} samples",
                        rows)

    def write_grid(self, path: Path, title: str, rows: list[dict]) -> None:
        """A PNG grid of the first ``grid_size`` rows (``sample``, ``reward``), rewards underneath, titled ``title``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = rows[:self.grid_size]
        cols = min(len(shown), self.per_row)
        lines = math.ceil(len(shown) / cols)
        fig, axes = plt.subplots(lines, cols, figsize=(1.3 * cols, 1.4 * lines + 0.5), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, r in zip(axes.flat, shown):
            image = r["sample"].detach().float().cpu().clamp(0, 1)
            if image.shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image.permute(1, 2, 0).numpy())
            ax.text(0.5, -0.03, f"{r['reward']:.2f}", transform=ax.transAxes, ha="center", va="top", fontsize=7)
        median = quantile_summary(torch.tensor([r["reward"] for r in rows]))["median"]
        fig.suptitle(f"{title}, {self.reward_name} underneath (median {median:.2f})", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
