"""Quality of the shipped MNIST models (the figures docs/reproducing.md states).

    python benchmarks/image_model_quality.py --data data/mnist/mnist_10k.npz [--num-samples 1000]

- Classifier (``checkpoints/images/classifier_mnist``): accuracy on the held-out test split.
- Compressibility proxy (``checkpoints/images/proxy_compress``): Pearson r with the JPEG compressibility
  on the test split.
- DDPM (``checkpoints/images/ddpm_mnist``), DDIM 50 steps eta 1, and the rectified flow
  (``checkpoints/images/flow_mnist``), 50 steps at each ``--noise-levels`` a (0: the flow ODE; a > 0 the SDE
  with the ODE's marginals), each over ``--num-samples`` samples against the test split's digits: the
  classifier's class frequencies (uniform is 0.1 each) and confidence (share of images with top
  probability > 0.9), ink fraction and compressibility medians, the Fréchet distance between the
  classifier's penultimate features of samples and test digits (an MNIST analogue of FID; the train split
  against the test split gives its floor), and denoiser calls per sample. A grid of each model's first 64
  samples is written beside the results.

Writes benchmarks/results/image_model_quality.json, benchmarks/results/mnist_ddpm_samples.png and
benchmarks/results/mnist_flow_samples_a<a>.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning import PretrainedSampling, checkpoints  # noqa: E402
from svdd_lightning.domains.images.data import load_digits, split_indices  # noqa: E402
from svdd_lightning.domains.images.outputs import ImageFiles  # noqa: E402
from svdd_lightning.domains.images.rewards import Compressibility, InkFraction  # noqa: E402

RESULTS = ROOT / "benchmarks/results"


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


@torch.no_grad()
def image_stats(classifier: torch.nn.Module, images: torch.Tensor) -> dict:
    """Classifier and pixel statistics of images (N, 1, H, W) in [0, 1]."""
    features = torch.cat([classifier.features(chunk * 2 - 1) for chunk in images.split(500)])
    probs = torch.softmax(classifier.head(features), dim=-1)
    top = probs.max(dim=-1)
    return {
        "features": features.numpy().astype(np.float64),
        "class_frequencies": torch.bincount(top.indices, minlength=probs.shape[1]).div(len(images)).tolist(),
        "confident_fraction": float((top.values > 0.9).float().mean()),
        "ink_fraction_median": float(torch.tensor(InkFraction()(images)).median()),
        "compressibility_median": float(torch.tensor(Compressibility()(images)).median()),
    }


def sample(model: torch.nn.Module, args: argparse.Namespace) -> dict:
    """``args.num_samples`` pretrained samples of ``model`` (sample i from seed i) with their time and
    denoiser calls per sample."""
    model = model.eval()
    start, samples, calls = time.perf_counter(), [], 0
    with torch.no_grad():
        for first in range(0, args.num_samples, args.batch_size):
            n = min(args.batch_size, args.num_samples - first)
            generators = [torch.Generator().manual_seed(first + i) for i in range(n)]
            result = PretrainedSampling().sample(model, lambda s: [0.0] * len(s), generators)
            samples += result.samples
            calls += result.stats.denoiser_calls
    samples = torch.stack(samples)
    return {"sampling_seconds": round(time.perf_counter() - start, 1),
            "denoiser_calls_per_sample": calls / args.num_samples, "samples": samples}


def quality(classifier: torch.nn.Module, samples: torch.Tensor, test_features: np.ndarray) -> dict:
    """:func:`image_stats` of the samples and the Fréchet distance of their features to the test digits'."""
    stats = image_stats(classifier, samples)
    return {"frechet_distance_to_test": frechet_distance(stats.pop("features"), test_features), **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="MNIST .npz (see docs/reproducing.md)")
    parser.add_argument("--model", default=str(ROOT / "checkpoints/images/ddpm_mnist"))
    parser.add_argument("--flow", default=str(ROOT / "checkpoints/images/flow_mnist"))
    parser.add_argument("--noise-levels", type=float, nargs="+", default=[0.0, 0.7],
                        help="the flow's noise levels a to sample at (0: the ODE)")
    parser.add_argument("--classifier", default=str(ROOT / "checkpoints/images/classifier_mnist"))
    parser.add_argument("--proxy", default=str(ROOT / "checkpoints/images/proxy_compress"))
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()

    images, labels = load_digits(args.data)
    split = split_indices(len(labels), 0.1, 0.1, 0)  # DigitsDataModule's default split
    test, train = images[split["test"]], images[split["train"]]
    classifier = checkpoints.load(args.classifier).eval()
    with torch.no_grad():
        accuracy = float((classifier(test).argmax(-1) == labels[split["test"]]).float().mean())
        proxy = checkpoints.load(args.proxy).eval()
        pearson = float(np.corrcoef(proxy(test).numpy(), Compressibility()(test))[0, 1])

    test_stats, train_stats = image_stats(classifier, test), image_stats(classifier, train)
    test_features, train_features = test_stats.pop("features"), train_stats.pop("features")
    sampled = {"ddpm": sample(checkpoints.load(args.model), args)}
    for a in args.noise_levels:
        sampled[f"flow_a{a:g}"] = sample(checkpoints.load(args.flow, overrides={"noise_level": a}), args)
    results = {
        "classifier_test_accuracy": accuracy, "test_images": len(test),
        "proxy_compress_test_pearson": pearson,
        **{name: {"num_samples": args.num_samples, "sampling_seconds": run["sampling_seconds"],
                  "denoiser_calls_per_sample": run["denoiser_calls_per_sample"],
                  **quality(classifier, run["samples"], test_features)} for name, run in sampled.items()},
        "train_split": {"frechet_distance_to_test": frechet_distance(train_features, test_features), **train_stats},
        "test_split": test_stats,
        "checkpoints": {name: checkpoints.metadata(path) for name, path in
                        (("ddpm", args.model), ("flow", args.flow), ("classifier", args.classifier),
                         ("proxy", args.proxy))},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image_model_quality.json").write_text(json.dumps(results, indent=2) + "\n")
    for name, run in sampled.items():
        first = run["samples"][:64]
        rows = [{"index": i, "sample": s, "reward": float(r)} for i, (s, r) in enumerate(zip(first, Compressibility()(first)))]
        title = ("MNIST DDPM, DDIM 50 steps" if name == "ddpm" else
                 f"MNIST rectified flow, 50 steps, noise level {name.removeprefix('flow_a')}")
        png = "mnist_ddpm_samples.png" if name == "ddpm" else f"mnist_flow_samples_{name.removeprefix('flow_')}.png"
        ImageFiles().write_grid(RESULTS / png, f"{title} (compressibility under each)", rows)
    print(json.dumps({k: v for k, v in results.items() if k != "checkpoints"}, indent=2))


if __name__ == "__main__":
    main()
