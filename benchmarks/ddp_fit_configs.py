"""The documented multi-process command of every shipped value-network config, run for a few steps.

    python benchmarks/ddp_fit_configs.py            # every configs/*/value_*.yaml job, 2 CPU processes

Each job is ``python train.py fit --config <the config(s)> --config <sizes> --trainer.devices 2
--trainer.strategy ddp --trainer.accelerator cpu``, where the sizes overlay only shrinks the run and moves
its folders to a temporary directory: 12 training and 4 validation rollouts in shards of 4 (3 and 1
shards: uneven over 2 processes), one epoch of 3 steps and its validation,
after which the export callback writes the network. Writes benchmarks/results/ddp_fit_configs_cpu.json: per job the
command, the exit status, whether the network was exported, the seconds and the last line of its error output when it failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from svdd_lightning.yaml_keys import read_config

ROOT = Path(__file__).resolve().parents[1]
JOBS = {  # name -> the configs the docs give for it
    "dna_value_mc": ["configs/dna/value_mc.yaml"],
    "dna_value_soft_q": ["configs/dna/value_mc.yaml", "configs/dna/value_soft_q.yaml"],
    "utr_value_mc_mrl": ["configs/utr/value_mc_mrl.yaml"],
    "utr_value_mc_stability": ["configs/utr/value_mc_stability.yaml"],
    "molecules_value_mc_qed": ["configs/molecules/value_mc_qed.yaml"],
    "molecules_value_mc_sa": ["configs/molecules/value_mc_sa.yaml"],
    "molecules_value_mc_docking_parp1": ["configs/molecules/value_mc_docking_parp1.yaml"],
    "images_value_mc_compress": ["configs/images/value_mc_compress.yaml"],
    "images_value_mc_classifier": ["configs/images/value_mc_classifier.yaml"],
}
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]


def sizes_overlay(configs: list[str], folder: Path) -> Path:
    """A config that shrinks the job and sends its outputs under ``folder`` (the export callback kept)."""
    callbacks = None
    for config in configs:
        callbacks = (read_config(ROOT / config).get("trainer") or {}).get("callbacks", callbacks)
    for callback in callbacks or []:
        if callback["class_path"].endswith("ExportBest"):
            callback["init_args"]["directory"] = str(folder / "export")
    overlay = {"trainer": {"limit_train_batches": 3, "max_epochs": 1, "default_root_dir": str(folder / "root"),
                           "log_every_n_steps": 1, "callbacks": callbacks},
               "data": {"init_args": {"num_rollouts": 12, "val_rollouts": 4, "shard_size": 4, "batch_size": 4,
                                      "cache_dir": str(folder / "rollouts")}}}
    path = folder / "sizes.yaml"
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def run_job(configs: list[str], folder: Path) -> dict:
    args = [a for c in configs for a in ("--config", c)] + ["--config", str(sizes_overlay(configs, folder))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK"):
        env.pop(key, None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", "fit", *args, *DDP], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return {"command": " ".join(["python train.py fit", *args[:-1], "<sizes>", *DDP]),
            "exit": done.returncode, "seconds": round(time.perf_counter() - start, 1),
            "exported": (folder / "export" / "config.json").is_file(),
            **({"error": lines[-1] if lines else ""} if done.returncode else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", nargs="*", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/ddp_fit_configs_cpu.json"))
    args = parser.parse_args()
    results = {}
    for name in args.jobs:
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = run_job(JOBS[name], Path(tmp))
        print(f"{name}: exit {results[name]['exit']} in {results[name]['seconds']} s"
              + (f" ({results[name]['error']})" if results[name]["exit"] else ""), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(0 if all(r["exit"] == 0 for r in results.values()) else 1)


if __name__ == "__main__":
    main()
