"""The shipped jobs' resolved settings: what ``--print_config`` of each documented command prints.

    python tests/config_jobs.py --write    # record them in tests/data/resolved_configs.json

``tests/test_config_composition.py`` resolves every job again and compares it with the record, so a change
of how the configs are written (composed from shared pieces, say) is checked to leave every job's settings
as they were. A ``finetune.py`` job is recorded as the composed settings it reads, keys sorted.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "data" / "resolved_configs.json"

# (command, configs) of every job the configs' headers, the docs and the README name
JOBS: list[tuple[str, tuple[str, ...]]] = [
    ("decode", ("configs/dna/compare.yaml",)),
    ("decode", ("configs/dna/compare.yaml", "configs/dna/frontier.yaml")),
    ("decode", ("configs/dna/compare.yaml", "configs/dna/reward_jaspar.yaml")),
    ("decode", ("configs/images/compare_classifier.yaml",)),
    ("decode", ("configs/images/compare_classifier_flow.yaml",)),
    ("decode", ("configs/images/compare_compress.yaml",)),
    ("decode", ("configs/images/compare_compress_flow.yaml",)),
    ("decode", ("configs/images/sd3_pickscore.yaml",)),
    ("decode", ("configs/images/sd_aesthetic.yaml",)),
    ("decode", ("configs/molecules/compare_docking_parp1.yaml",)),
    ("decode", ("configs/molecules/compare_docking_parp1_moses.yaml",)),
    ("decode", ("configs/molecules/compare_qed.yaml",)),
    ("decode", ("configs/molecules/compare_qed_moses.yaml",)),
    ("decode", ("configs/molecules/compare_sa_moses.yaml",)),
    ("decode", ("configs/molecules/compare_sa.yaml",)),
    ("decode", ("configs/utr/compare_mrl.yaml",)),
    ("decode", ("configs/utr/compare_mrl.yaml", "configs/utr/reward_mrl_plus_stability.yaml")),
    ("decode", ("configs/utr/compare_stability.yaml",)),
    ("finetune", ("configs/dna/finetune.yaml",)),
    ("finetune", ("configs/dna/finetune.yaml", "configs/dna/finetune_ps.yaml")),
    ("finetune", ("configs/dna/finetune.yaml", "configs/dna/finetune_ps.yaml", "configs/dna/finetune_large.yaml")),
    ("finetune", ("configs/dna/finetune.yaml", "configs/dna/finetune_ps.yaml", "configs/dna/finetune_large.yaml",
                  "configs/dna/finetune_long.yaml")),
    ("finetune", ("configs/utr/finetune_mrl.yaml",)),
    ("train", ("configs/dna/finetune.yaml",)),
    ("train", ("configs/dna/finetune.yaml", "configs/dna/finetune_from_run.yaml")),
    ("train", ("configs/dna/finetune.yaml", "configs/dna/finetune_ps.yaml")),
    ("train", ("configs/dna/oracle_eval.yaml",)),
    ("train", ("configs/dna/oracle_reward.yaml",)),
    ("train", ("configs/dna/pretrain.yaml",)),
    ("train", ("configs/dna/value_mc.yaml",)),
    ("train", ("configs/dna/value_mc.yaml", "configs/dna/value_soft_q.yaml")),
    ("train", ("configs/images/classifier_mnist.yaml",)),
    ("train", ("configs/images/pretrain_mnist.yaml",)),
    ("train", ("configs/images/pretrain_mnist_flow.yaml",)),
    ("train", ("configs/images/proxy_compress.yaml",)),
    ("train", ("configs/images/value_mc_classifier.yaml",)),
    ("train", ("configs/images/value_mc_compress.yaml",)),
    ("train", ("configs/molecules/pretrain_moses.yaml",)),
    ("train", ("configs/molecules/pretrain_moses_selfies.yaml",)),
    ("train", ("configs/molecules/pretrain_moses_smiles.yaml",)),
    ("train", ("configs/molecules/pretrain_qm9.yaml",)),
    ("train", ("configs/molecules/value_mc_docking_parp1.yaml",)),
    ("train", ("configs/molecules/value_mc_docking_parp1_moses.yaml",)),
    ("train", ("configs/molecules/value_mc_qed.yaml",)),
    ("train", ("configs/molecules/value_mc_qed_moses.yaml",)),
    ("train", ("configs/molecules/value_mc_sa.yaml",)),
    ("train", ("configs/molecules/value_mc_sa_moses.yaml",)),
    ("train", ("configs/utr/finetune_mrl.yaml",)),
    ("train", ("configs/utr/oracle_mrl.yaml",)),
    ("train", ("configs/utr/pretrain.yaml",)),
    ("train", ("configs/utr/value_mc_mrl.yaml",)),
    ("train", ("configs/utr/value_mc_stability.yaml",)),
]


def job_name(command: str, configs: tuple[str, ...]) -> str:
    return " ".join([command, *configs])


def resolve(command: str, configs: tuple[str, ...]) -> str:
    """The job's settings as YAML: ``--print_config``'s output (train, decode) or the composed settings
    ``finetune.py`` reads."""
    from svdd_lightning.lightning.cli import main_decode, main_train
    from svdd_lightning.lightning.expert_iteration import read_configs

    if command == "finetune":
        # the settings, not their order: finetune.py hands them to train.py, which reads them by name
        return yaml.safe_dump(read_configs([str(ROOT / c) for c in configs]), sort_keys=True)
    args = [a for c in configs for a in ("--config", str(ROOT / c))]
    main, subcommand = (main_train, "fit") if command == "train" else (main_decode, "predict")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([subcommand, *args, "--print_config"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise RuntimeError(f"{job_name(command, configs)}: --print_config exited with {exit_.code}") from None
    return out.getvalue()


def resolve_all() -> dict[str, str]:
    return {job_name(command, configs): resolve(command, configs) for command, configs in JOBS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"record the resolved settings in {RECORD}")
    args = parser.parse_args()
    resolved = resolve_all()
    if args.write:
        RECORD.write_text(json.dumps(resolved, indent=1) + "\n")
        print(f"wrote {len(resolved)} jobs to {RECORD}")
    else:
        json.dump(resolved, sys.stdout, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
