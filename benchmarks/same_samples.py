"""Same seeds, same samples: decode fixed batches with the shipped models in this checkout and in an earlier
revision, and compare samples, rewards and compute counters method by method.

    python benchmarks/same_samples.py --against ff3bee5

Each tree decodes (Python API, 2 threads): DNA pretrained (32), Best-of-3 (16), SVDD-PM M = 10 (32),
SVDD-MC M = 10 (16), SMC (16) with the reward oracle; 5'UTR SVDD-PM M = 10 with the ViennaRNA stability
reward (16); QM9 pretrained (16) and SVDD-PM (M = 4, 6-step x0, selection every 10 of 100 steps; QED) (8).
Writes benchmarks/results/same_samples.json: per method whether samples and rewards (to 1e-5) match, and
the counters of both (reward calls may drop where a per-sample reward's scores are kept for the call).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIGEST = r'''
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from svdd_lightning import checkpoints, PretrainedSampling, BestOfN, SVDD, SMC, PosteriorMeanValue, NetworkValue
try:  # the run's reward wrapper, under its name in either revision
    from svdd_lightning.core.reward import GuardedReward
except ImportError:
    from svdd_lightning.core.reward import Reward as GuardedReward
try:
    from svdd_lightning.domains.sequences.oracle import OracleReward
except ImportError:
    from svdd_lightning.oracle_reward import OracleReward
from svdd_lightning.domains.utr.rewards import MinimumFreeEnergy
from svdd_lightning.domains.molecules.rewards import QED
torch.set_num_threads(2)
ckpt = sys.argv[3] + "/checkpoints/"
out = {}
def run(name, model, reward, decoder, n):
    generators = [torch.Generator().manual_seed(1000 + i) for i in range(n)]
    with torch.inference_mode():
        r = decoder.sample(model, reward, generators)
    out[name] = {"samples": list(r.samples), "rewards": r.rewards.tolist(), "stats": vars(r.stats)}
dna = checkpoints.load(ckpt + "dna/mdlm").eval()
oracle = GuardedReward(OracleReward(ckpt + "dna/oracle_reward"), floor=-10)
run("dna_pretrained", dna, oracle, PretrainedSampling(), 32)
run("dna_best_of_3", dna, oracle, BestOfN(3), 16)
run("dna_svdd_pm", dna, oracle, SVDD(PosteriorMeanValue(), 10), 32)
run("dna_svdd_mc", dna, oracle, SVDD(NetworkValue(ckpt + "dna/value_mc"), 10), 16)
run("dna_smc", dna, oracle, SMC(PosteriorMeanValue(), alpha=0.5), 16)
utr = checkpoints.load(ckpt + "utr/mdlm").eval()
run("utr_stability_svdd_pm", utr, GuardedReward(MinimumFreeEnergy()), SVDD(PosteriorMeanValue(), 10), 16)
mol = checkpoints.load(ckpt + "molecules/gdss_qm9", overrides={"num_steps": 100}).eval()
run("qm9_pretrained", mol, GuardedReward(QED()), PretrainedSampling(), 16)
run("qm9_svdd_pm", mol, GuardedReward(QED()), SVDD(PosteriorMeanValue(x0_steps=6), 4, select_every=10), 8)
json.dump(out, open(sys.argv[2], "w"))
'''


def digest(tree: Path, out: Path) -> dict:
    subprocess.run([sys.executable, "-c", DIGEST, str(tree), str(out), str(ROOT)], check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the earlier git revision")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        archive = subprocess.run(["git", "archive", args.against, "svdd_lightning"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(old_tree, filter="data")
        old = digest(old_tree, Path(tmp) / "old.json")
        new = digest(ROOT, Path(tmp) / "new.json")
    rows = {}
    for name in old:
        a, b = old[name], new[name]
        rows[name] = {"samples_identical": a["samples"] == b["samples"],
                      "rewards_match": all(abs(x - y) <= 1e-5 for x, y in zip(a["rewards"], b["rewards"])),
                      "stats_before": a["stats"], "stats_now": b["stats"]}
        print(f"{name:<24} samples identical: {rows[name]['samples_identical']!s:<6} rewards match: "
              f"{rows[name]['rewards_match']!s:<6} reward calls {a['stats']['reward_calls']} -> {b['stats']['reward_calls']}")
    path = ROOT / "benchmarks" / "results" / "same_samples.json"
    path.write_text(json.dumps({"against": args.against, "methods": rows}, indent=2) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
