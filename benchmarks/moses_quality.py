"""MOSES quality of a molecule model (Polykovskiy et al. 2020), from its pretrained samples.

    python benchmarks/moses_quality.py --model runs/molecules/mdlm_moses_smiles \\
        --train data/molecules/moses_train.csv.gz --test data/molecules/moses_test.csv.gz --num-samples 10000

Reports, over all samples: validity, unique@1000 and unique@10000, novelty against the train file,
internal diversity, FCD to the test file, and the Wasserstein-1 distances of QED, SA, logP and molecular
weight to the test file (svdd_lightning.domains.molecules.moses_metrics). ChemNet pads every SMILES to 350
steps, so FCD over MOSES's 176k test molecules takes long on a CPU: ``--reference-molecules`` scores against
a seeded sample of the test file instead.

Writes benchmarks/results/moses_quality_<model directory name>.json (or ``--output``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning import PretrainedSampling, checkpoints  # noqa: E402
from svdd_lightning.domains.molecules.moses_metrics import (FCD, PROPERTIES, PropertyDistance,  # noqa: E402
                                                           internal_diversity, unique_at)
from svdd_lightning.domains.molecules.rewards import Novelty, validity  # noqa: E402


def sample(model, num_samples: int, batch_size: int) -> list[str]:
    """``num_samples`` pretrained samples, sample i from the generator seeded i."""
    samples = []
    with torch.inference_mode():
        for first in range(0, num_samples, batch_size):
            gens = [torch.Generator().manual_seed(i) for i in range(first, min(first + batch_size, num_samples))]
            samples += PretrainedSampling().sample(model, lambda s: [0.0] * len(s), gens).samples
    return samples


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a checkpoint directory of a molecule model")
    parser.add_argument("--train", required=True, help="the training SMILES CSV (novelty)")
    parser.add_argument("--test", required=True, help="the reference SMILES CSV (FCD, property distances)")
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--num-steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--reference-molecules", type=int, default=None,
                        help="a seeded sample of this many test molecules (default: all)")
    parser.add_argument("--output", default=None, help="the JSON to write")
    args = parser.parse_args(argv)

    overrides = None if args.num_steps is None else {"num_steps": args.num_steps}
    model = checkpoints.load(args.model, overrides=overrides)
    start = time.time()
    smiles = sample(model, args.num_samples, args.batch_size)
    seconds = time.time() - start
    result = {
        "model": args.model, "metadata": checkpoints.metadata(args.model), "samples": len(smiles),
        "num_steps": model.num_steps, "sampling_seconds": round(seconds, 1),
        "validity": validity(smiles), "unique@1000": unique_at(smiles, 1000),
        "unique@10000": unique_at(smiles, 10000), "novelty": Novelty(args.train)(smiles),
        "internal_diversity": internal_diversity(smiles),
        "fcd_test": FCD(args.test, max_molecules=args.reference_molecules)(smiles),
        **{f"wasserstein_{name}": PropertyDistance(args.test, name, max_molecules=args.reference_molecules)(smiles)
           for name in PROPERTIES},
        "reference_molecules": args.reference_molecules,
    }
    out = Path(args.output or ROOT / "benchmarks" / "results" / f"moses_quality_{Path(args.model).name}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
