"""Benchmark of amortised search: fine-tuning on SVDD-PM designs (expert iteration), DNA or 5'UTR MRL.

    python benchmarks/finetune.py --task dna
    python benchmarks/finetune.py --task utr_mrl --optimus data/utr/optimus5prime_evolution_model.hdf5

Stages, each resumable (a killed run continues; ``--max-stages K`` stops after K unfinished stages):

- ``eval_0``: pretrained sampling and SVDD-PM (M = 10) from the pretrained model, with the task's
  compare config (``configs/dna/compare.yaml``, ``configs/utr/compare_mrl.yaml``): its reward, its
  evaluation oracle, 3-mer correlation; the ELBO is taken under the ORIGINAL pretrained model;
- ``round_k`` (k = 1 .. --rounds): one round of ``finetune.py`` with the task's fine-tuning config
  (``configs/dna/finetune.yaml``, ``configs/utr/finetune_mrl.yaml``): SVDD-PM designs from round k-1's
  model, fine-tuning on them, export;
- ``eval_k``: the same two methods from round k's model.

Then it prints and writes ``benchmarks/results/finetune_<name>_<accelerator>.json`` (``--name``, default: the
task) and a plot of the reward against naturalness across rounds (``.png``). ``--config`` runs the rounds
with another fine-tuning config (repeat it to compose an overlay over the task's config) and
``--schedule KEY=V1,V2,...`` sets a setting per round (as ``finetune.py --schedule``); give such a run
its own ``--name`` so that the runs and results of the shipped config are kept. Denoiser calls per sample are given for sampling
alone and with the one-time cost of generating the fine-tuning sets (all rounds so far) spread over
1,000 and 10,000 designs, with the number of designs at which fine-tuning breaks even with SVDD-PM
from the pretrained model.
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning.lightning.expert_iteration import read_configs  # noqa: E402
from svdd_lightning.yaml_keys import read_config  # noqa: E402

TASKS = {
    "dna": {"compare": "configs/dna/compare.yaml", "finetune": "configs/dna/finetune.yaml",
            "pretrained": "checkpoints/dna/mdlm", "oracle": "eval_oracle"},
    "utr_mrl": {"compare": "configs/utr/compare_mrl.yaml", "finetune": "configs/utr/finetune_mrl.yaml",
                "pretrained": "checkpoints/utr/mdlm", "oracle": "optimus5prime"},
}
METHODS = ("pretrained", "svdd_pm")
AMORTISE_OVER = (1_000, 10_000)


def eval_config(task: dict, model: str, optimus: str | None) -> dict:
    """The task's compare config reduced to pretrained sampling and SVDD-PM from ``model``, with the ELBO
    under the original pretrained model (and Optimus 5-Prime as a column for the UTR task)."""
    config = read_config(ROOT / task["compare"])
    config["model"]["model"] = model
    config["model"]["methods"] = {m: config["model"]["methods"][m] for m in METHODS}
    metrics = config["model"]["metrics"]
    metrics.pop("elbo", None)
    metrics["elbo_pretrained"] = {"class_path": "svdd_lightning.evaluation.ELBOMetric",
                                  "init_args": {"num_times": 16, "model": task["pretrained"]}}
    if task["oracle"] == "optimus5prime":
        metrics["optimus5prime"] = {"class_path": "svdd_lightning.evaluation.ScoreMetric", "init_args": {
            "fn": {"class_path": "svdd_lightning.domains.utr.optimus.OptimusScore", "init_args": {"path": optimus}}}}
    return config


def _done(out: Path, num_samples: int) -> bool:
    summary = out / "summary.json"
    if not summary.is_file():
        return False
    entries = json.loads(summary.read_text())
    return all(m in entries and entries[m]["n"] >= num_samples for m in METHODS)


def run_eval(task: dict, model: str, out: Path, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(eval_config(task, model, args.optimus), sort_keys=False))
    decode(config, out, args.num_samples, args)


def decode(config: Path, out: Path, num_samples: int, args: argparse.Namespace) -> None:
    """``decode.py predict`` of ``config`` into ``out`` (resumes), designs 0 .. num_samples-1, with the
    benchmark's batch size and accelerator."""
    subprocess.run([sys.executable, str(ROOT / "decode.py"), "predict", "--config", str(config), "--output_dir", str(out),
                    "--data.num_samples", str(num_samples), "--data.batch_size", str(args.batch_size),
                    "--trainer.accelerator", args.accelerator, "--trainer.enable_progress_bar", "false"],
                   cwd=ROOT, check=True)


def run_round(task: dict, k: int, out: Path, args: argparse.Namespace) -> None:
    configs = [arg for config in task["finetune"] for arg in ("--config", config)]
    subprocess.run([sys.executable, str(ROOT / "finetune.py"), *configs, "--rounds", str(k),
                    "--output_dir", str(out / "iteration"), "--trainer.accelerator", args.accelerator,
                    "--trainer.enable_progress_bar", "false", *(f"--schedule={item}" for item in args.schedule)],
                   cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=256, help="designs per method and model in the evaluations")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--optimus", default=None, help="Optimus 5-Prime HDF5 weights (utr_mrl)")
    parser.add_argument("--config", action="append", default=None,
                        help="fine-tuning config of one round (default: the task's); repeat to compose configs, "
                             "e.g. the task's config and an overlay")
    parser.add_argument("--schedule", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="finetune.py --schedule: a fine-tuning setting per round (repeatable)")
    parser.add_argument("--name", default=None, help="names the results file and the default output folder "
                                                     "(default: the task)")
    parser.add_argument("--output-dir", default=None, help="default: runs/finetune_<name>")
    parser.add_argument("--max-stages", type=int, default=None, help="stop after this many unfinished stages")
    args = parser.parse_args()
    task = dict(TASKS[args.task])
    task["finetune"] = args.config or [task["finetune"]]
    for config in task["finetune"]:
        if not (ROOT / config).is_file():
            sys.exit(f"error: --config: no file {config}")
    args.name = args.name or args.task
    if task["oracle"] == "optimus5prime" and not (args.optimus and Path(args.optimus).is_file()):
        sys.exit("error: --optimus: give the Optimus 5-Prime HDF5 weights (evolution_model.hdf5) for the UTR task")
    out = Path(args.output_dir or ROOT / "runs" / f"finetune_{args.name}").resolve()
    stages_path = out / "stages.json"
    stages = json.loads(stages_path.read_text()) if stages_path.is_file() else {}

    plan = [("eval_0", lambda: run_eval(task, task["pretrained"], out / "eval_0", args))]
    for k in range(1, args.rounds + 1):
        model = str(out / "iteration" / f"round_{k}" / "model")
        plan.append((f"round_{k}", lambda k=k: run_round(task, k, out, args)))
        plan.append((f"eval_{k}", lambda k=k, model=model: run_eval(task, model, out / f"eval_{k}", args)))
    ran = 0
    for name, stage in plan:
        finished = (_done(out / name, args.num_samples) if name.startswith("eval")
                    else (out / "iteration" / name / "round.json").is_file())
        if finished:
            continue
        if args.max_stages is not None and ran >= args.max_stages:
            print(f"stopping before {name} (--max-stages {args.max_stages}); rerun to continue")
            return
        start = time.time()
        stage()
        stages[name] = {"seconds": round(time.time() - start, 1), "resumed": name in stages}
        out.mkdir(parents=True, exist_ok=True)
        stages_path.write_text(json.dumps(stages, indent=2) + "\n")
        ran += 1
    report(args, task, out, stages)


def _row(entry: dict, oracle: str) -> dict:
    row = {"reward_median": entry["reward"]["median"], "reward_top10": entry["reward"]["top10"],
           "oracle_median": entry[oracle]["median"], "oracle_top10": entry[oracle]["top10"],
           "3mer_pearson": entry["3mer_pearson"], "elbo_pretrained_median": entry["elbo_pretrained"]["median"],
           "distinct_fraction": entry["distinct_fraction"], "nfe_per_sample": entry["per_sample"]["denoiser_calls"],
           "reward_calls_per_sample": entry["per_sample"]["reward_calls"], "wall_seconds": entry["wall_seconds"]}
    if "fraction_above_0" in entry[oracle]:
        row["oracle_called_positive"] = entry[oracle]["fraction_above_0"]
    return row


def report(args: argparse.Namespace, task: dict, out: Path, stages: dict) -> None:
    oracle = task["oracle"]
    rounds = json.loads((out / "iteration" / "rounds.json").read_text())[: args.rounds]
    finetune_config = read_configs([ROOT / config for config in task["finetune"]])
    table, one_time = [], 0.0
    for k in range(args.rounds + 1):
        summary = json.loads((out / f"eval_{k}" / "summary.json").read_text())
        fit = {}
        if k:
            record = rounds[k - 1]
            generated = next(iter(record["generated"].values()))
            one_time += generated["n"] * generated["per_sample"]["denoiser_calls"]
            fit = {"generated_n": generated["n"], "generated_reward_median": generated["reward"]["median"],
                   "generated_nfe_per_sample": generated["per_sample"]["denoiser_calls"],
                   "generated_wall_seconds": generated["wall_seconds"],
                   "fit_train_seconds": record["fit"].get("train_seconds"), "fit_steps": record["fit"].get("global_step"),
                   "val_loss": record["fit"].get("val/loss"), "round_seconds": record["seconds"]}
        for method in METHODS:
            row = {"round": k, "method": method, **_row(summary[method], oracle), "one_time_nfe": one_time, **fit}
            for n in AMORTISE_OVER:
                row[f"nfe_per_sample_amortised_{n}"] = row["nfe_per_sample"] + one_time / n
            table.append(row)
    svdd_0 = next(r for r in table if r["round"] == 0 and r["method"] == "svdd_pm")
    for row in table:
        saved = svdd_0["nfe_per_sample"] - row["nfe_per_sample"]
        row["break_even_designs"] = row["one_time_nfe"] / saved if row["round"] and saved > 0 else None
    result = {
        "task": args.task, "name": args.name, "num_samples": args.num_samples, "rounds": args.rounds, "oracle": oracle,
        "finetune_config": task["finetune"], "finetune_settings": {
            "model": finetune_config["model"]["init_args"], "trainer_max_steps": finetune_config["trainer"]["max_steps"],
            "data": {k: v for k, v in finetune_config["data"]["init_args"].items() if k not in ("decoder", "reward",
                                                                                                 "anchor_data")},
            "schedule": args.schedule},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "accelerator": args.accelerator},
        "stages": stages, "table": table, "targets": targets(table),
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"finetune_{args.name}_{args.accelerator}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(table, results / f"finetune_{args.name}_{args.accelerator}.png", args.name, oracle)
    print_table(table, oracle)
    print(json.dumps(result["targets"], indent=2))
    print(f"written: {path}")


def targets(table: list[dict]) -> dict:
    """The issue's targets per round: 1x sampling from the fine-tuned model reaches SVDD-PM's median
    reward from the pretrained model with 3-mer r >= 0.90 and >= 90% distinct designs, and SVDD-PM on
    the fine-tuned model beats both; and where the reward rises while the evaluation oracle falls."""
    get = {(r["round"], r["method"]): r for r in table}
    svdd_0 = get[(0, "svdd_pm")]
    out = {}
    for k in sorted({r["round"] for r in table if r["round"]}):
        ft, ft_svdd = get[(k, "pretrained")], get[(k, "svdd_pm")]
        out[f"round_{k}"] = {
            "finetuned_1x_reaches_svdd_pm_median": ft["reward_median"] >= svdd_0["reward_median"],
            "finetuned_1x_3mer_at_least_0.90": ft["3mer_pearson"] >= 0.90,
            "finetuned_1x_distinct_at_least_0.90": ft["distinct_fraction"] >= 0.90,
            "svdd_on_finetuned_beats_both": ft_svdd["reward_median"] > max(ft["reward_median"], svdd_0["reward_median"]),
        }
        for method in ("pretrained", "svdd_pm"):
            now, before = get[(k, method)], get[(k - 1, method)]
            out[f"round_{k}"][f"{method}_reward_up_oracle_down"] = (now["reward_median"] > before["reward_median"]
                                                                    and now["oracle_median"] < before["oracle_median"])
    return out


def print_table(table: list[dict], oracle: str) -> None:
    print(f"\n{'round':<6}{'method':<12}{'reward med':>11}{'top10%':>8}{oracle + ' med':>18}{'3-mer r':>9}"
          f"{'ELBO(pre)':>11}{'distinct':>9}{'NFE':>8}{'NFE@1k':>9}{'NFE@10k':>9}")
    for r in table:
        print(f"{r['round']:<6}{r['method']:<12}{r['reward_median']:>11.3f}{r['reward_top10']:>8.3f}"
              f"{r['oracle_median']:>18.3f}{r['3mer_pearson']:>9.3f}{r['elbo_pretrained_median']:>11.1f}"
              f"{r['distinct_fraction']:>9.3f}{r['nfe_per_sample']:>8.0f}{r['nfe_per_sample_amortised_1000']:>9.0f}"
              f"{r['nfe_per_sample_amortised_10000']:>9.0f}")


def plot(table: list[dict], path: Path, task: str, oracle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    panels = (("3mer_pearson", "3-mer Pearson r with held-out sequences"),
              ("elbo_pretrained_median", "median ELBO under the pretrained model (nats)"),
              ("oracle_median", f"median {oracle} (evaluation oracle)"))
    for ax, (key, label) in zip(axes, panels):
        for method, style in (("pretrained", "o-"), ("svdd_pm", "s--")):
            rows = [r for r in table if r["method"] == method]
            x, y = [r[key] for r in rows], [r["reward_median"] for r in rows]
            ax.plot(x, y, style, label="1x sampling" if method == "pretrained" else "SVDD-PM (M = 10)")
            for r, xi, yi in zip(rows, x, y):
                ax.annotate(f"r{r['round']}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("median reward")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{task}: reward against naturalness across fine-tuning rounds (r0 = pretrained model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
