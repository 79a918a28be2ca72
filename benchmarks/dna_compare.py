"""Benchmark of the main job: the DNA comparison at 1,024 samples per method.

    python benchmarks/dna_compare.py                      # CPU, writes benchmarks/results/dna_compare_cpu.json
    python benchmarks/dna_compare.py --accelerator gpu --precision bf16-mixed --batch-size 256

Runs ``decode.py predict --config configs/dna/compare.yaml`` with more samples, then prints per
method the reward and evaluation-oracle quantiles, samples per second, and the ratio of SVDD's wall
time to M x pretrained sampling's (goal: at most 1.15, i.e. choosing among the M proposals costs
little beyond drawing them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from svdd_lightning.yaml_keys import read_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--config", default="configs/dna/compare.yaml")
    parser.add_argument("--output-dir", default=None, help="decode outputs (default: runs/benchmark_<accelerator>)")
    args = parser.parse_args()

    out = Path(args.output_dir or ROOT / "runs" / f"benchmark_{args.accelerator}")
    if (out / "parts").exists():
        sys.exit(f"error: {out} holds results of an earlier run; remove it or pass --output-dir")
    start = time.time()
    command = [sys.executable, str(ROOT / "decode.py"), "predict", "--config", args.config, "--output_dir", str(out),
               "--data.num_samples", str(args.num_samples), "--data.batch_size", str(args.batch_size),
               "--trainer.accelerator", args.accelerator, "--trainer.precision", args.precision]
    subprocess.run(command, cwd=ROOT, check=True)
    total = time.time() - start

    summary = json.loads((out / "summary.json").read_text())
    m = _num_candidates(out / "config.yaml")
    ratio = summary["svdd_pm"]["wall_seconds"] / (m * summary["pretrained"]["wall_seconds"])
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "accelerator": args.accelerator, "precision": args.precision,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "num_samples": args.num_samples, "batch_size": args.batch_size, "total_seconds": round(total, 1),
        "svdd_over_m_pretrained_wall": ratio, "num_candidates": m,
        "methods": {name: {"reward": e["reward"], "eval_oracle": e.get("eval_oracle"),
                           "samples_per_second": e["samples_per_second"], "wall_seconds": e["wall_seconds"],
                           "per_sample": e["per_sample"]} for name, e in summary.items()},
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"dna_compare_{args.accelerator}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'method':<12}{'median':>9}{'top20%':>9}{'top10%':>9}{'eval med':>10}{'eval top10':>11}{'samples/s':>11}")
    for name, e in result["methods"].items():
        r, ev = e["reward"], e["eval_oracle"] or {}
        print(f"{name:<12}{r['median']:>9.3f}{r['top20']:>9.3f}{r['top10']:>9.3f}{ev.get('median', float('nan')):>10.3f}"
              f"{ev.get('top10', float('nan')):>11.3f}{e['samples_per_second']:>11.2f}")
    print(f"SVDD wall / (M={m} x pretrained wall) = {ratio:.3f}   (goal <= 1.15)")
    print(f"written: {path}")


def _num_candidates(config: Path) -> int:
    data = read_config(config)
    return int(data["model"]["methods"]["svdd_pm"]["init_args"]["num_candidates"])


if __name__ == "__main__":
    main()
