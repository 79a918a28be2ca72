"""The fine-tuning target checked with more designs: the two arms of a ``benchmarks/finetune.py`` run, extended.

    python benchmarks/finetune_check.py --name dna_ps_long --round 2 --num-samples 512

The target's arms are SVDD-PM (M = 10) from the pretrained model (the run's ``eval_0``) and 1× sampling
from round k's model (``eval_k``). Each is copied to ``eval_<k>_<N>`` and decoded up to N designs with
its evaluation config reduced to that one method: the seed and sample indices are the benchmark's, so
the first designs are the table's own and only the new ones are decoded (a killed run resumes). Then
it writes ``benchmarks/results/finetune_<name>_<N>_<accelerator>.json``: each arm's summary, the
difference of the median rewards with a bootstrap 95% interval, each arm's 3-mer correlation with a
bootstrap 95% interval, and the targets (1× median at least SVDD-PM's, 3-mer r >= 0.90, >= 90% distinct).
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.finetune import decode  # noqa: E402
from svdd_lightning.lightning.finetuning import read_decode_run  # noqa: E402
from svdd_lightning.domains.sequences.metrics import kmer_frequencies, pearson  # noqa: E402
from svdd_lightning.sample_files import read_fasta  # noqa: E402
from svdd_lightning.threads import machine_record  # noqa: E402

ARMS = {"svdd_pm_from_pretrained": (0, "svdd_pm"), "finetuned_1x": (None, "pretrained")}


def arm_config(eval_config: dict, method: str) -> dict:
    """A benchmark evaluation config reduced to one method."""
    config = copy.deepcopy(eval_config)
    config["model"]["methods"] = {method: config["model"]["methods"][method]}
    return config


def extend(run: Path, k: int, method: str, n: int, args: argparse.Namespace) -> float:
    """Decode ``method`` of ``run``'s ``eval_k`` up to ``n`` designs in ``eval_k_n``; returns the seconds taken."""
    source, out = run / f"eval_{k}", run / f"eval_{k}_{n}"
    if not (source / "summary.json").is_file():
        raise FileNotFoundError(f"--name: {source} is not a finished benchmark evaluation; run benchmarks/finetune.py first")
    if not out.exists():
        shutil.copytree(source, out, ignore=shutil.ignore_patterns(".decode.lock"))
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(arm_config(yaml.safe_load(source.with_suffix(".yaml").read_text()), method),
                                     sort_keys=False))
    start = time.time()
    decode(config, out, n, args)
    return time.time() - start


def read_arm(folder: Path, method: str, n: int) -> tuple[list[str], list[float]]:
    """Sequences and rewards of ``method``'s designs 0 .. n-1 in a decode output folder."""
    _, indices, samples, rewards = read_decode_run(folder, method)
    if len(indices) < n:
        raise ValueError(f"{folder} holds {len(indices)} designs of {method}, fewer than --num-samples {n}")
    return samples[:n], rewards[:n].tolist()


def bootstrap(finetuned: tuple[list[str], list[float]], svdd: tuple[list[str], list[float]], reference: list[str],
              k: int, resamples: int, seed: int = 0) -> dict:
    """Bootstrap 95% intervals (2.5% and 97.5% quantiles over ``resamples`` resamples of each arm's designs):
    of the median reward difference (fine-tuned 1× minus SVDD-PM) and of each arm's k-mer correlation."""
    rng = random.Random(seed)
    ref = kmer_frequencies(reference, k)
    counts = {name: torch.stack([kmer_frequencies([s], k) for s in seqs]) for name, (seqs, _) in
              (("finetuned_1x", finetuned), ("svdd_pm_from_pretrained", svdd))}
    diffs, kmers = [], {name: [] for name in counts}
    for _ in range(resamples):
        picks = {name: [rng.randrange(len(c)) for _ in range(len(c))] for name, c in counts.items()}
        diffs.append(statistics.median(finetuned[1][i] for i in picks["finetuned_1x"])
                     - statistics.median(svdd[1][i] for i in picks["svdd_pm_from_pretrained"]))
        for name, c in counts.items():
            kmers[name].append(pearson(c[picks[name]].sum(0), ref))

    def interval(values: list[float]) -> list[float]:
        values = sorted(values)
        return [values[int(0.025 * len(values))], values[min(int(0.975 * len(values)), len(values) - 1)]]

    return {"reward_median_difference_bootstrap_95": interval(diffs),
            **{f"{name}_{k}mer_pearson_bootstrap_95": interval(v) for name, v in kmers.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the benchmarks/finetune.py run (its --name)")
    parser.add_argument("--round", type=int, required=True, help="the fine-tuned model's round")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--output-dir", default=None, help="the run's folder (default: runs/finetune_<name>)")
    args = parser.parse_args()
    if args.round < 1:
        parser.error(f"--round must be a fine-tuning round >= 1, got {args.round}")
    run = Path(args.output_dir or ROOT / "runs" / f"finetune_{args.name}").resolve()
    n = args.num_samples
    seconds, arms = {}, {}
    for arm, (k, method) in ARMS.items():
        k = args.round if k is None else k
        seconds[arm] = round(extend(run, k, method, n, args), 1)
        folder = run / f"eval_{k}_{n}"
        arms[arm] = {"folder": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
                     "summary": json.loads((folder / "summary.json").read_text())[method],
                     "designs": read_arm(folder, method, n)}
    kmer = yaml.safe_load((run / "eval_0.yaml").read_text()).get("writer", {}).get("set_metrics", {}).get("3mer_pearson")
    if kmer is None:
        raise ValueError(f"--name: {run / 'eval_0.yaml'} has no writer.set_metrics.3mer_pearson (a sequence task's "
                         f"evaluation); this check is for the DNA and 5'UTR tasks")
    kmer = kmer["init_args"]
    intervals = bootstrap(arms["finetuned_1x"]["designs"], arms["svdd_pm_from_pretrained"]["designs"],
                          read_fasta(kmer["reference"]), kmer["k"], args.resamples)
    ft, svdd = (arms[a]["summary"] for a in ("finetuned_1x", "svdd_pm_from_pretrained"))
    result = {
        "what": (f"The fine-tuning target's two arms with {n} designs each (the benchmark's seed and indices 0..{n - 1}): "
                 f"SVDD-PM (M = 10) from the pretrained model and 1x sampling from round {args.round}'s model of "
                 f"benchmarks/results/finetune_{args.name}_{args.accelerator}.json"),
        "command": "python benchmarks/finetune_check.py " + " ".join(sys.argv[1:]),
        "machine": machine_record(),
        "decode_seconds_this_invocation": seconds,
        **{arm: {"folder": a["folder"], **a["summary"]} for arm, a in arms.items()},
        "reward_median_difference": ft["reward"]["median"] - svdd["reward"]["median"],
        **intervals,
        "bootstrap": f"{args.resamples} resamples of each arm's {n} designs (random.Random(0)), 2.5% and 97.5% quantiles",
        "targets": {"reaches_svdd_pm_median": ft["reward"]["median"] >= svdd["reward"]["median"],
                    "3mer_at_least_0.90": ft["3mer_pearson"] >= 0.90,
                    "distinct_at_least_0.90": ft["distinct_fraction"] >= 0.90},
    }
    path = ROOT / "benchmarks" / "results" / f"finetune_{args.name}_{n}_{args.accelerator}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ARMS}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
