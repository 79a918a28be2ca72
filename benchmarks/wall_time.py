"""Wall time of a decode job's methods, run interleaved per batch in one process, with its thread setting.

    python benchmarks/wall_time.py --config configs/dna/compare.yaml --name dna_job
    python benchmarks/wall_time.py --config configs/utr/compare_stability.yaml --name utr_stability_job \\
        --num-samples 128 -- --model.reward.init_args.processes 2

Runs ``decode.py predict`` (every method on every batch, in turn, as the job does) and writes
``benchmarks/results/wall_time_<name>_<accelerator>.json``: per method the wall seconds, samples per
second, denoiser and reward calls per sample, and the ratio of each guided method's wall time to M x
pretrained sampling's (M its candidates; goals: at most 1.15 for SVDD-PM on the DNA job, at most 10 for
the stability job's SVDD-PM on 2 cores), with the machine, the torch threads of the run and where they
came from. Arguments after ``--`` go to ``decode.py`` unchanged. Wall times on a shared machine include
whatever else ran on it: the result records the load average at the start.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning.threads import machine_record  # noqa: E402


def candidates_of(config: dict, method: str) -> int | None:
    init = config["model"]["methods"][method].get("init_args") or {}
    return init.get("num_candidates") or init.get("n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--name", required=True, help="names the result file")
    parser.add_argument("--num-samples", type=int, default=None, help="default: the config's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--output-dir", default=None, help="decode outputs (default: runs/wall_time_<name>, replaced)")
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("decode_args", nargs="*", help="after --: more decode.py arguments")
    args = parser.parse_args()

    out = Path(args.output_dir or ROOT / "runs" / f"wall_time_{args.name}")
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, str(ROOT / "decode.py"), "predict", "--config", args.config, "--output_dir", str(out),
               "--trainer.accelerator", args.accelerator, "--trainer.enable_progress_bar", "false"]
    for flag, value in (("--data.num_samples", args.num_samples), ("--data.batch_size", args.batch_size),
                        ("--trainer.precision", args.precision)):
        if value is not None:
            command += [flag, str(value)]
    command += args.decode_args
    machine = machine_record(processes=1)
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    total = time.time() - start

    summary = json.loads((out / "summary.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    pretrained = summary.get("pretrained", {}).get("wall_seconds")
    methods = {}
    for name, entry in summary.items():
        m = candidates_of(config, name)
        methods[name] = {"n": entry["n"], "wall_seconds": entry["wall_seconds"],
                         "samples_per_second": entry["samples_per_second"], "per_sample": entry["per_sample"],
                         "reward_median": entry["reward"]["median"], "candidates": m}
        if pretrained and m and name != "pretrained":
            methods[name]["wall_over_m_pretrained"] = entry["wall_seconds"] / (m * pretrained)
            methods[name]["wall_over_pretrained"] = entry["wall_seconds"] / pretrained
    result = {"config": args.config, "command": " ".join(command[1:]), "total_seconds": round(total, 1),
              "data": config["data"], "machine": machine, "methods": methods}
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"wall_time_{args.name}_{args.accelerator}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'method':<14}{'n':>6}{'seconds':>10}{'samples/s':>11}{'NFE/sample':>12}{'reward calls':>14}{'/ M x pre':>11}")
    for name, e in methods.items():
        ratio = e.get("wall_over_m_pretrained")
        print(f"{name:<14}{e['n']:>6}{e['wall_seconds']:>10.1f}{e['samples_per_second']:>11.2f}"
              f"{e['per_sample']['denoiser_calls']:>12.1f}{e['per_sample']['reward_calls']:>14.1f}"
              f"{'' if ratio is None else f'{ratio:.3f}':>11}")
    print(f"threads: {machine['torch_threads']} ({machine['threads_source']}), OMP_WAIT_POLICY="
          f"{machine['omp_wait_policy']}, load average at start {machine['load_average_at_start']}")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
