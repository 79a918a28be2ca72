"""Held-out quality of the shipped DNA models (the figures docs/reproducing.md states).

    python benchmarks/dna_model_quality.py --data data/dna/dhs_200bp_4celltypes.tsv.gz

- masked diffusion model: NELBO on the test split (bits per token; 2.0 is a uniform guess), and
  k-mer statistics of its samples against held-out test regions (Pearson correlation of 3-mer and
  6-mer frequencies, GC content), beside the same statistics for train-split regions (the
  reference a perfect model would reach) and for shuffled ones (a floor);
- reward and evaluation oracles: AUROC (HepG2 vs the rest) on the test split.

Writes benchmarks/results/dna_model_quality.json.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_auroc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning import PretrainedSampling, checkpoints  # noqa: E402
from svdd_lightning.domains.dna.data import encode_dna, read_regions  # noqa: E402
from svdd_lightning.domains.sequences.metrics import kmer_correlation  # noqa: E402


def gc(seqs: list[str]) -> float:
    return sum(s.count("G") + s.count("C") for s in seqs) / sum(len(s) for s in seqs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the DHS regions TSV (see docs/reproducing.md)")
    parser.add_argument("--model", default=str(ROOT / "checkpoints/dna/mdlm"))
    parser.add_argument("--oracles", nargs="*", default=[str(ROOT / "checkpoints/dna/oracle_reward"),
                                                         str(ROOT / "checkpoints/dna/oracle_eval")])
    parser.add_argument("--num-samples", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)

    frame = read_regions(args.data)
    test = frame[frame["split"] == "test"]
    test_seqs = test["sequence"].tolist()
    train_seqs = frame[frame["split"] == "train"]["sequence"].sample(len(test_seqs), random_state=0).tolist()
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(s, len(s))) for s in test_seqs]
    result: dict = {"data": str(args.data), "test_regions": len(test_seqs)}

    model = checkpoints.load(args.model)
    tokens = encode_dna(test_seqs)
    with torch.inference_mode():
        elbo = torch.cat([model.elbo(chunk, num_times=32, seed=0) for chunk in tokens.split(256)])
        start = time.time()
        gens = [torch.Generator().manual_seed(i) for i in range(args.num_samples)]
        samples = PretrainedSampling().sample(model, lambda s: [0.0] * len(s), gens).samples
        seconds = time.time() - start
    bits = float(-elbo.mean() / (tokens.shape[1] * math.log(2)))
    result["mdlm"] = {
        "metadata": checkpoints.metadata(args.model),
        "test_nelbo_bits_per_token": bits,
        "samples": args.num_samples, "sampling_seconds": round(seconds, 1),
        "gc": {"samples": gc(samples), "test": gc(test_seqs), "train": gc(train_seqs)},
    }
    for k in (3, 6):
        result["mdlm"][f"{k}mer_pearson_vs_test"] = {"samples": kmer_correlation(samples, test_seqs, k),
                                                     "train_regions": kmer_correlation(train_seqs, test_seqs, k),
                                                     "shuffled_test": kmer_correlation(shuffled, test_seqs, k)}

    labels = torch.tensor((test["cell_type"] == "HepG2").to_numpy())
    for path in args.oracles:
        network = checkpoints.load(path)
        with torch.inference_mode():
            logits = torch.cat([network(chunk) for chunk in tokens.split(512)])
        result[Path(path).name] = {"test_auroc": float(binary_auroc(logits, labels.long())),
                                   "metadata": checkpoints.metadata(path)}

    out = ROOT / "benchmarks" / "results" / "dna_model_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
