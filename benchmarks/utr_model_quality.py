"""Held-out quality of the shipped 5'UTR models (the figures docs/reproducing.md states).

    python benchmarks/utr_model_quality.py --data data/utr/human_5utr_mrl.csv.gz \
        [--optimus data/utr/optimus5prime_evolution_model.hdf5]

On the test genes of the gene-wise split (``UTRDataModule``'s defaults):
- masked diffusion model: NELBO in bits per nucleotide, beside a unigram and a second-order Markov
  model fitted on the train genes; k-mer statistics of its samples against test UTRs (3-mer and
  4-mer Pearson r, GC content, upstream AUGs per UTR, -MFE), beside train UTRs (what a perfect
  model would reach) and shuffled test UTRs (a floor);
- MRL oracle: Pearson and Spearman r with measured MRL; Optimus 5-Prime on the same UTRs for scale.

Writes benchmarks/results/utr_model_quality.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning import PretrainedSampling, checkpoints  # noqa: E402
from svdd_lightning.domains.utr.data import UTRDataModule, encode_rna  # noqa: E402
from svdd_lightning.domains.utr.rewards import MinimumFreeEnergy, UpstreamAUGs  # noqa: E402
from svdd_lightning.domains.sequences.oracle import OracleReward  # noqa: E402
from svdd_lightning.domains.sequences.metrics import GCContent, kmer_correlation  # noqa: E402


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def markov_bits(train: list[str], test: list[str], order: int) -> float:
    """Held-out bits per nucleotide of an add-one-smoothed Markov chain of ``order`` (0: unigram)."""
    counts, contexts = collections.Counter(), collections.Counter()
    for s in train:
        for i in range(len(s)):
            context = s[max(0, i - order): i]
            counts[context + s[i]] += 1
            contexts[context] += 1
    bits = [-math.log2((counts[s[max(0, i - order): i] + s[i]] + 1) / (contexts[s[max(0, i - order): i]] + 4))
            for s in test for i in range(len(s))]
    return mean(bits)


def profile(seqs: list[str]) -> dict[str, float]:
    return {"gc": mean(GCContent()(seqs)), "upstream_augs": mean(UpstreamAUGs()(seqs)),
            "minus_mfe": mean(MinimumFreeEnergy()(seqs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the 5'UTR MRL table (see docs/reproducing.md)")
    parser.add_argument("--model", default=str(ROOT / "checkpoints/utr/mdlm"))
    parser.add_argument("--oracle", default=str(ROOT / "checkpoints/utr/oracle_mrl"))
    parser.add_argument("--optimus", default=None, help="Optimus 5-Prime HDF5 weights (optional)")
    parser.add_argument("--num-samples", type=int, default=1024)
    args = parser.parse_args()
    torch.manual_seed(0)

    frame = UTRDataModule(args.data).split_frame()
    to_rna = lambda seqs: [s.upper().replace("T", "U") for s in seqs]  # noqa: E731
    test, train_frame = frame[frame["split"] == "test"], frame[frame["split"] == "train"]
    test_seqs, train_all = to_rna(test["utr"].tolist()), to_rna(train_frame["utr"].tolist())
    train_seqs = to_rna(train_frame["utr"].sample(len(test_seqs), random_state=0).tolist())
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(s, len(s))) for s in test_seqs]
    result: dict = {"data": str(args.data), "test_utrs": len(test_seqs), "test_genes": int(test["gene_symbol"].nunique())}

    model = checkpoints.load(args.model)
    tokens = encode_rna(test_seqs)
    with torch.inference_mode():
        elbo = model.elbo(tokens, num_times=64, seed=0)
        start = time.time()
        gens = [torch.Generator().manual_seed(i) for i in range(args.num_samples)]
        samples = PretrainedSampling().sample(model, lambda s: [0.0] * len(s), gens).samples
        seconds = time.time() - start
    result["mdlm"] = {
        "metadata": checkpoints.metadata(args.model),
        "test_nelbo_bits_per_nt": float(-elbo.mean() / (tokens.shape[1] * math.log(2))),
        "baselines_bits_per_nt": {"unigram": markov_bits(train_all, test_seqs, 0),
                                  "markov_order2": markov_bits(train_all, test_seqs, 2)},
        "samples": args.num_samples, "sampling_seconds": round(seconds, 1),
        "profile": {"samples": profile(samples), "test": profile(test_seqs), "train": profile(train_seqs)},
        "distinct_fraction": len(set(samples)) / len(samples),
        "copies_of_training_utrs": sum(s in set(train_all) for s in samples) / len(samples),
    }
    for k in (3, 4):
        result["mdlm"][f"{k}mer_pearson_vs_test"] = {"samples": kmer_correlation(samples, test_seqs, k),
                                                     "train_utrs": kmer_correlation(train_seqs, test_seqs, k),
                                                     "shuffled_test": kmer_correlation(shuffled, test_seqs, k)}

    measured = torch.tensor(test["mrl"].to_numpy(), dtype=torch.float64)
    scorers = {"oracle_mrl": OracleReward(args.oracle)}
    if args.optimus:
        from svdd_lightning.domains.utr.optimus import OptimusScore

        scorers["optimus5prime"] = OptimusScore(args.optimus)
    for name, scorer in scorers.items():
        pred = torch.tensor(scorer(test_seqs), dtype=torch.float64)
        result[name] = {"test_pearson": float(pearson_corrcoef(pred, measured)),
                        "test_spearman": float(spearman_corrcoef(pred, measured))}
    result["oracle_mrl"]["metadata"] = checkpoints.metadata(args.oracle)

    out = ROOT / "benchmarks" / "results" / "utr_model_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
