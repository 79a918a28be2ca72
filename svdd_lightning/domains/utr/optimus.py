"""Optimus 5-Prime (Sample et al. 2019) as a PyTorch module: an independent MRL oracle for 5'UTRs.

Sample et al., "Human 5' UTR design and variant effect prediction from a massively parallel
translation assay" (Nature Biotechnology 37:803, 2019) trained a small CNN on 50-nt random 5'UTRs
followed by ``ATGG`` to predict mean ribosome load (MRL, z-scored). Its weights are the Keras 1.2
HDF5 file ``modeling/saved_models/evolution_model.hdf5`` of the paper's repository (GPL-3.0); they
are not shipped with this package: pass the file's path. It is read with h5py alone (no pickle, no
Keras).

Layout: the Keras 1.2 file stores TensorFlow-ordered kernels (filter_length, 1, in, out) applied as
cross-correlations (not flipped), and Flatten reads the (positions, channels) output row-major
(index = position * 40 + channel). With that layout the predictions on the 3,002 human 5'UTRs of
Sample et al. correlate with measured MRL at Pearson r = 0.816 (Spearman 0.807); flipped kernels or
a channels-first Flatten give r <= 0.32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...core.reward import Reward
from ...extras import require
from ...diffusion.tokens import tokenize

UTR_LENGTH = 50
SUFFIX = "ATGG"
INPUT_LENGTH = UTR_LENGTH + len(SUFFIX)
ALPHABET = "ACGT"

# Keras dataset (under model_weights/) -> expected shape
WEIGHT_SHAPES: dict[str, tuple[int, ...]] = {
    "convolution1d_1/convolution1d_1_W:0": (8, 1, 4, 40),
    "convolution1d_1/convolution1d_1_b:0": (40,),
    "convolution1d_2/convolution1d_2_W:0": (8, 1, 40, 40),
    "convolution1d_2/convolution1d_2_b:0": (40,),
    "dense_1/dense_1_W:0": (1600, 40),
    "dense_1/dense_1_b:0": (40,),
    "dense_2/dense_2_W:0": (40, 1),
    "dense_2/dense_2_b:0": (1,),
}


class Optimus5Prime(nn.Module):
    """Conv1d(4->40, k8, valid) relu, Conv1d(40->40, k8, valid) relu, Flatten (positions x channels),
    Linear(1600->40) relu, Linear(40->1). Dropout (p=0.2, after the first Linear) is inactive at inference.

    ``forward`` takes one-hot (N, 54, 4) in Keras' (length, channels) order, A/C/G/T channels, the
    50-nt UTR followed by ATGG, and returns the z-scored MRL prediction (N,).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 40, 8)
        self.conv2 = nn.Conv1d(40, 40, 8)
        self.dense1 = nn.Linear(1600, 40)
        self.dense2 = nn.Linear(40, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.transpose(1, 2)))
        h = F.relu(self.conv2(h))
        h = h.transpose(1, 2).flatten(1)  # Keras Flatten of (positions, channels)
        return self.dense2(F.relu(self.dense1(h))).squeeze(-1)


def load_optimus5prime(path: str | Path) -> Optimus5Prime:
    """Read the published Keras 1.2 HDF5 weights into an :class:`Optimus5Prime` (eval mode, frozen)."""
    require("h5py", extra="rna", feature="reading the Optimus 5-Prime weights")
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Optimus 5-Prime weights: no file at {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"Optimus 5-Prime weights: {path} is not a readable HDF5 file ({err})") from None
    weights = {}
    with handle:
        for name, shape in WEIGHT_SHAPES.items():
            key = f"model_weights/{name}"
            if key not in handle or not isinstance(handle[key], h5py.Dataset):
                raise ValueError(f"Optimus 5-Prime weights: {path} lacks dataset {key}")
            if handle[key].shape != shape:
                raise ValueError(f"Optimus 5-Prime weights: {path} dataset {key} has shape "
                                 f"{handle[key].shape}, expected {shape}")
            weights[name] = torch.from_numpy(handle[key][()]).float()
    model = Optimus5Prime()
    with torch.no_grad():
        for layer, conv in (("convolution1d_1", model.conv1), ("convolution1d_2", model.conv2)):
            conv.weight.copy_(weights[f"{layer}/{layer}_W:0"][:, 0].permute(2, 1, 0))  # (k,1,in,out) -> (out,in,k)
            conv.bias.copy_(weights[f"{layer}/{layer}_b:0"])
        for layer, dense in (("dense_1", model.dense1), ("dense_2", model.dense2)):
            dense.weight.copy_(weights[f"{layer}/{layer}_W:0"].T)  # (in,out) -> (out,in)
            dense.bias.copy_(weights[f"{layer}/{layer}_b:0"])
    model.eval()
    model.requires_grad_(False)
    return model


class OptimusScore(Reward):
    """Optimus 5-Prime's z-scored MRL prediction for 50-nt 5'UTRs (ACGU or ACGT, any case).

    A sequence of another length or with a symbol outside ACGT/U scores NaN.

    Args:
        path: the published Keras HDF5 weights (``evolution_model.hdf5``).
        batch_size: sequences per network call.
    """

    name = "optimus5prime"
    unit = "z-scored MRL"

    def __init__(self, path: str, batch_size: int = 4096) -> None:
        if batch_size < 1:
            raise ValueError(f"OptimusScore.batch_size must be positive, got {batch_size}")
        self.model = load_optimus5prime(path)
        self.batch_size = batch_size

    def __call__(self, samples: Sequence[str]) -> list[float]:
        scores = torch.full((len(samples),), float("nan"), dtype=torch.float64)
        rows = [i for i, s in enumerate(samples) if isinstance(s, str) and len(s) == UTR_LENGTH]
        if rows:
            tokens = tokenize([samples[i] + SUFFIX for i in rows], ALPHABET)
            known = (tokens >= 0).all(dim=1)
            index = torch.tensor(rows)[known]
            tokens = tokens[known]
            with torch.no_grad():
                for start in range(0, len(tokens), self.batch_size):
                    batch = F.one_hot(tokens[start:start + self.batch_size], 4).float()
                    scores[index[start:start + self.batch_size]] = self.model(batch).double()
        return scores.tolist()
