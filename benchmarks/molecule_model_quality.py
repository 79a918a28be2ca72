"""Quality of the shipped QM9 graph diffusion model, as GDSS reports it (the figures docs/reproducing.md states).

    python benchmarks/molecule_model_quality.py --data data/molecules/qm9_smiles.csv.gz [--num-samples 3000]

Samples molecules with the pretrained sampler and reports, over ALL samples: validity without
valency correction, validity with GDSS's correction (reported separately), uniqueness (distinct
valid / valid), novelty against the training split, and FCD to the test split (the ``fcd`` package,
ChemNet weights in its wheel; skipped if it is not installed). GDSS's published QM9 figures:
validity w/o correction 95.7%, FCD 2.9.

Writes benchmarks/results/molecule_model_quality.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning import PretrainedSampling, checkpoints  # noqa: E402
from svdd_lightning.domains.molecules.data import MoleculeDataModule  # noqa: E402
from svdd_lightning.domains.molecules.graphs import correct_valency, to_smiles  # noqa: E402
from svdd_lightning.domains.molecules.rewards import canonical, novelty, uniqueness, validity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="QM9 SMILES CSV (see docs/reproducing.md)")
    parser.add_argument("--model", default=str(ROOT / "checkpoints/molecules/gdss_qm9"))
    parser.add_argument("--num-samples", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    model = checkpoints.load(args.model)
    data = MoleculeDataModule(args.data, atoms=model.atoms, max_nodes=model.max_nodes)
    data.setup()
    smiles, corrected, start = [], [], time.time()
    with torch.inference_mode():
        for first in range(0, args.num_samples, args.batch_size):
            gens = [torch.Generator().manual_seed(i) for i in range(first, min(first + args.batch_size, args.num_samples))]
            result = PretrainedSampling().sample(model, lambda s: [0.0] * len(s), gens)
            smiles += result.samples
            x0 = result.x0
            corrected += to_smiles(correct_valency(x0["x"], x0["adj"], x0["flags"], model.atoms))
    seconds = time.time() - start
    train = {canonical(s) for s in data.smiles["train"]}
    result = {
        "model": args.model, "metadata": checkpoints.metadata(args.model), "samples": len(smiles),
        "sampling_seconds": round(seconds, 1),
        "validity_without_correction": validity(smiles),
        "validity_with_correction": validity(corrected),
        "uniqueness": uniqueness(smiles), "novelty": novelty(smiles, train),
        "gdss_published": {"validity_without_correction": 0.957, "fcd": 2.9},
    }
    valid = [s for s in smiles if s]
    try:
        from fcd import get_fcd
    except ImportError:
        get_fcd = None
    # FCD needs a covariance of the valid samples' ChemNet activations
    result["fcd_test"] = (float(get_fcd(valid, [canonical(s) for s in data.smiles["test"]]))
                          if get_fcd is not None and len(valid) > 1 else None)
    out = ROOT / "benchmarks" / "results" / "molecule_model_quality.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
