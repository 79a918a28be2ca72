"""Optimus 5-Prime loader: a random HDF5 in the published Keras 1.2 layout against a NumPy Keras forward."""
import json
import math

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from svdd_lightning.domains.utr.optimus import OptimusScore, load_optimus5prime  # noqa: E402

SHAPES = {
    "convolution1d_1": {"W": (8, 1, 4, 40), "b": (40,)},
    "convolution1d_2": {"W": (8, 1, 40, 40), "b": (40,)},
    "dense_1": {"W": (1600, 40), "b": (40,)},
    "dense_2": {"W": (40, 1), "b": (1,)},
}
LAYERS = ["convolution1d_1", "convolution1d_2", "flatten_1", "dense_1", "dropout_1", "activation_1", "dense_2",
          "activation_2"]


def _model_config() -> str:
    conv = {"filter_length": 8, "nb_filter": 40, "border_mode": "valid", "activation": "relu",
            "subsample_length": 1, "batch_input_shape": [None, 54, 4]}
    layers = [{"class_name": "Convolution1D", "config": {**conv, "name": "convolution1d_1"}},
              {"class_name": "Convolution1D", "config": {**conv, "name": "convolution1d_2"}},
              {"class_name": "Flatten", "config": {"name": "flatten_1"}},
              {"class_name": "Dense", "config": {"name": "dense_1", "output_dim": 40, "activation": "linear"}},
              {"class_name": "Dropout", "config": {"name": "dropout_1", "p": 0.2}},
              {"class_name": "Activation", "config": {"name": "activation_1", "activation": "relu"}},
              {"class_name": "Dense", "config": {"name": "dense_2", "output_dim": 1, "activation": "linear"}},
              {"class_name": "Activation", "config": {"name": "activation_2", "activation": "linear"}}]
    return json.dumps({"class_name": "Sequential", "config": layers})


def _write(path, skip: str | None = None) -> dict:
    """A Keras-1.2-style weight file with seeded random weights; ``skip`` leaves out one dataset."""
    rng = np.random.default_rng(0)
    weights = {}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"1.2.0"
        f.attrs["model_config"] = _model_config().encode()
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = np.array([n.encode() for n in LAYERS])
        for layer in LAYERS:
            sub = group.create_group(layer)
            names = [f"{layer}_{k}:0" for k in SHAPES.get(layer, {})]
            sub.attrs["weight_names"] = np.array([n.encode() for n in names])
            for k, shape in SHAPES.get(layer, {}).items():
                fan_in = int(np.prod(shape[:-1])) if k == "W" else 1
                value = (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)
                weights[f"{layer}_{k}"] = value
                if f"{layer}_{k}:0" != skip:
                    sub.create_dataset(f"{layer}_{k}:0", data=value)
    return weights


def _keras_forward(w: dict, x: np.ndarray) -> np.ndarray:
    """Keras 1.2 (TensorFlow backend) semantics: valid cross-correlation, Flatten of (steps, channels)."""
    def conv(h, kernel, bias):  # h (N, L, C_in), kernel (k, 1, C_in, C_out)
        k = kernel.shape[0]
        out = np.stack([np.einsum("nki,kio->no", h[:, t:t + k], kernel[:, 0]) for t in range(h.shape[1] - k + 1)],
                       axis=1)
        return np.maximum(out + bias, 0.0)

    h = conv(x.astype(np.float64), w["convolution1d_1_W"], w["convolution1d_1_b"])
    h = conv(h, w["convolution1d_2_W"], w["convolution1d_2_b"])
    flat = np.empty((h.shape[0], h.shape[1] * h.shape[2]))
    for step in range(h.shape[1]):
        for channel in range(h.shape[2]):
            flat[:, step * h.shape[2] + channel] = h[:, step, channel]
    hidden = np.maximum(flat @ w["dense_1_W"] + w["dense_1_b"], 0.0)  # Dropout is the identity at inference
    return (hidden @ w["dense_2_W"] + w["dense_2_b"])[:, 0]


def _one_hot(seqs: list[str]) -> np.ndarray:
    x = np.zeros((len(seqs), len(seqs[0]), 4))
    for n, s in enumerate(seqs):
        for p, c in enumerate(s):
            x[n, p, "ACGT".index(c)] = 1.0
    return x


@pytest.fixture
def weight_file(tmp_path):
    path = tmp_path / "evolution_model.hdf5"
    return path, _write(path)


def _random_utrs(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), 50)) for _ in range(n)]


def test_module_matches_numpy_keras_forward(weight_file):
    path, weights = weight_file
    model = load_optimus5prime(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    seqs = [s + "ATGG" for s in _random_utrs(16)]
    x = _one_hot(seqs)
    expected = _keras_forward(weights, x)
    assert expected.std() > 1e-3  # the check is not vacuous
    got = model(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    scores = OptimusScore(str(path), batch_size=5)([s[:50] for s in seqs])
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=1e-5)


def test_rna_and_dna_score_alike(weight_file, inference_mode):
    score = OptimusScore(str(weight_file[0]))
    dna = _random_utrs(8, seed=2)
    rna = [s.replace("T", "U") for s in dna]
    assert score(rna) == score(dna)
    assert score([s.lower() for s in rna]) == score(dna)


def test_unscorable_sequences_are_nan(weight_file):
    score = OptimusScore(str(weight_file[0]))
    good = _random_utrs(2, seed=3)
    values = score([good[0], "N" + good[1][1:], good[1][:49], good[1] + "A", good[1]])
    assert math.isfinite(values[0]) and math.isfinite(values[4])
    assert all(math.isnan(v) for v in values[1:4])
    assert score([]) == []


def test_missing_dataset_is_named(tmp_path):
    path = tmp_path / "broken.hdf5"
    _write(path, skip="dense_1_W:0")
    with pytest.raises(ValueError, match="model_weights/dense_1/dense_1_W:0"):
        load_optimus5prime(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        load_optimus5prime(tmp_path / "absent.hdf5")
