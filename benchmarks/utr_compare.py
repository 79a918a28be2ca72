"""Benchmark of the two 5'UTR jobs, with the published Optimus 5-Prime as an independent MRL judge.

    python benchmarks/utr_compare.py --optimus data/utr/optimus5prime_evolution_model.hdf5

Runs ``decode.py predict`` on ``configs/utr/compare_mrl.yaml`` and ``configs/utr/compare_stability.yaml``,
then scores every design with Optimus 5-Prime (Sample et al. 2019; read from its HDF5 weights, not
shipped: it is not ours to ship). Prints and writes per task and method the reward quantiles, the
Optimus 5-Prime quantiles, GC content, upstream AUGs, 3-mer r and wall time to
benchmarks/results/utr_compare_<accelerator>.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning.domains.utr.optimus import OptimusScore  # noqa: E402
from svdd_lightning.evaluation import quantile_summary  # noqa: E402

TASKS = {"mrl": "configs/utr/compare_mrl.yaml", "stability": "configs/utr/compare_stability.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimus", required=True, help="Optimus 5-Prime HDF5 weights (evolution_model.hdf5)")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--output-dir", default=None, help="decode outputs (default: runs/utr_benchmark_<accelerator>)")
    args = parser.parse_args()
    optimus = OptimusScore(args.optimus)
    base = Path(args.output_dir or ROOT / "runs" / f"utr_benchmark_{args.accelerator}")

    result: dict = {"num_samples": args.num_samples, "accelerator": args.accelerator, "tasks": {}}
    for task, config in TASKS.items():
        out = base / task
        if (out / "parts").exists():
            sys.exit(f"error: {out} holds results of an earlier run; remove it or pass --output-dir")
        start = time.time()
        subprocess.run([sys.executable, str(ROOT / "decode.py"), "predict", "--config", config, "--output_dir", str(out),
                        "--data.num_samples", str(args.num_samples), "--data.batch_size", str(args.batch_size),
                        "--trainer.accelerator", args.accelerator], cwd=ROOT, check=True)
        summary = json.loads((out / "summary.json").read_text())
        designs: dict[str, list[str]] = defaultdict(list)
        with open(out / "samples.csv") as handle:
            for row in csv.DictReader(handle):
                designs[row["method"]].append(row["sequence"])
        methods = {}
        for method, entry in summary.items():
            methods[method] = {
                "reward": entry["reward"],
                "optimus5prime": quantile_summary(torch.tensor(optimus(designs[method]), dtype=torch.float64)),
                **{k: entry[k] for k in ("gc_content", "upstream_augs", "3mer_pearson", "distinct_fraction",
                                         "per_sample", "wall_seconds") if k in entry},
                **{k: entry[k] for k in ("stability", "mrl", "elbo") if k in entry},
            }
        result["tasks"][task] = {"config": config, "total_seconds": round(time.time() - start, 1), "methods": methods}

    path = ROOT / "benchmarks" / "results" / f"utr_compare_{args.accelerator}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    for task, entry in result["tasks"].items():
        print(f"\n{task} ({entry['total_seconds']} s)")
        print(f"{'method':<12}{'reward med':>11}{'top10%':>9}{'optimus med':>13}{'top10%':>9}{'GC':>7}{'uAUG':>7}")
        for method, m in entry["methods"].items():
            print(f"{method:<12}{m['reward']['median']:>11.3f}{m['reward']['top10']:>9.3f}"
                  f"{m['optimus5prime']['median']:>13.3f}{m['optimus5prime']['top10']:>9.3f}"
                  f"{m['gc_content']['mean']:>7.3f}{m['upstream_augs']['mean']:>7.2f}")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
