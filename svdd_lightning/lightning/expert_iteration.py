"""Expert iteration: rounds of generate -> fine-tune -> generate from the fine-tuned model.

    python finetune.py --config configs/dna/finetune.yaml [--config OVERLAY.yaml] --rounds 3 [--output_dir DIR]
        [--schedule KEY=V1,V2,...] [train.py fit overrides]

The config is a ``train.py fit`` config of one round (:class:`GuidedFineTuning` over a
:class:`GuidedSamplesDataModule` that generates its samples with a decoder); several ``--config``
compose as in ``train.py``: each later file's settings replace the earlier ones' (a component given
with another ``class_path`` replaces the earlier component whole). Round k (1, 2, ...):

1. the decoder draws the fine-tuning set from round k-1's model (round 1: the config's model) into
   ``DIR/round_<k>/generated`` (decode.py's format: ``samples.csv``, ``summary.json`` with the reward
   quantiles and the compute per sample);
2. round k-1's model is fine-tuned on it, anchored to the ORIGINAL model (``model.reference``), and
   exported to ``DIR/round_<k>/model`` (``decode.py`` loads it like any model);
3. ``DIR/round_<k>/round.json`` records the round: the set's summary, the fit's metadata, timings.

A round with a ``round.json`` is finished and is skipped: a killed run continues from the last
finished round (and, inside the round, from the samples already generated). ``--rounds`` is the
total: ``--rounds 3`` after a run of ``--rounds 2`` does round 3 only. Round k's generation seed is
the config's ``data.seed`` + k - 1, so rounds do not reuse each other's random numbers.

``--schedule KEY=V1,V2,...`` (repeatable) sets a ``train.py fit`` setting per round: V1 in round 1,
V2 in round 2, the last value in every later round (e.g. ``--schedule model.data_weight=0.1,1.0``:
a light anchor while the model is still close to the pretrained one, a stronger one after).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import yaml

from .. import checkpoints, yaml_keys
from ..paths import find
from .cli import _one_line_errors, main_train
from .folders import atomic_write

ROUND_RECORD = "round.json"
EXPORT = "svdd_lightning.lightning.training.ExportBest"
# settings each round sets itself; overriding them for every round would break the chain
MANAGED = ("model.model", "model.reference", "data.model", "data.cache_dir", "data.seed", "seed_everything",
           "trainer.default_root_dir", "trainer.callbacks")


def round_dir(output_dir: str | Path, k: int) -> Path:
    return Path(output_dir) / f"round_{k}"


def round_config(base: dict, k: int, previous: str, reference: str, directory: Path) -> dict:
    """The fit config of round k: fine-tune ``previous`` on its own guided samples, anchored to ``reference``."""
    config = copy.deepcopy(base)
    model_args, data_args = config["model"]["init_args"], config["data"]["init_args"]
    model_args.update(model=previous, reference=reference)
    data_args.update(model=previous, cache_dir=str(directory / "generated"), seed=int(data_args.get("seed", 0)) + k - 1)
    config["seed_everything"] = int(base.get("seed_everything") or 0) + k - 1
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(directory)
    callbacks = [c for c in trainer.get("callbacks") or [] if c.get("class_path") != EXPORT]
    exports = [c for c in trainer.get("callbacks") or [] if c.get("class_path") == EXPORT]
    monitor = exports[0]["init_args"] if exports else {"monitor": "val/loss", "mode": "min"}
    # a round without its round.json did not finish: its fit starts again and replaces a partial export
    callbacks.append({"class_path": EXPORT, "init_args": {**monitor, "directory": str(directory / "model"),
                                                          "overwrite": True}})
    trainer["callbacks"] = callbacks
    return config


def _managed(name: str) -> bool:
    return name.lstrip("-").replace(".init_args", "") in MANAGED


def parse_schedule(items: list[str] | tuple[str, ...] | dict[str, list] | None) -> dict[str, list[str]]:
    """``["model.data_weight=0.1,1.0"]`` (or that dict) -> ``{"model.data_weight": ["0.1", "1.0"]}``, checked."""
    if isinstance(items, dict):
        schedule = {str(k).lstrip("-"): ["null" if v is None else str(v)
                                         for v in (vs if isinstance(vs, (list, tuple)) else [vs])]
                    for k, vs in items.items()}
    else:
        schedule = {}
        for item in items or ():
            key, sep, values = item.partition("=")
            if not sep or not key.strip("-") or not values:
                raise ValueError(f"--schedule {item}: expected KEY=V1,V2,... (e.g. model.data_weight=0.1,1.0)")
            schedule[key.lstrip("-")] = values.split(",")
    for key, values in schedule.items():
        if _managed(key):
            raise ValueError(f"--schedule {key}: set by each round (from the previous round's model and --output_dir)")
        if not values or any(not v for v in values):
            raise ValueError(f"--schedule {key}: give one value per round, comma-separated (e.g. {key}=0.1,1.0)")
    return schedule


def scheduled_args(schedule: dict[str, list[str]], k: int) -> list[str]:
    """The ``train.py fit`` overrides of round k: each setting's k-th value, or its last."""
    return [f"--{key}={values[min(k, len(values)) - 1]}" for key, values in schedule.items()]


def _check(base: dict, config: str, extra_args: list[str]) -> None:
    model, data = base.get("model") or {}, base.get("data") or {}
    if not str(model.get("class_path", "")).endswith("GuidedFineTuning") or "model" not in model.get("init_args", {}):
        raise ValueError(f"{config}: model must be svdd_lightning.lightning.finetuning.GuidedFineTuning with init_args.model")
    if not str(data.get("class_path", "")).endswith("GuidedSamplesDataModule") or not data.get("init_args", {}).get("decoder"):
        raise ValueError(f"{config}: data must be a GuidedSamplesDataModule with init_args.decoder (each round "
                         f"generates its samples)")
    for arg in extra_args:
        if _managed(arg.split("=")[0]):
            raise ValueError(f"{arg.split('=')[0]} is set by each round (from the previous round's model and "
                             f"--output_dir); change it in the config instead")


def read_configs(configs: str | Path | list[str | Path] | tuple[str | Path, ...]) -> dict:
    """The configs, found as ``train.py`` finds them and composed in order (:func:`~svdd_lightning.yaml_keys.compose`)."""
    composed: dict = {}
    for config in [configs] if isinstance(configs, (str, Path)) else configs:
        path = find(config)  # a shipped config from any working directory
        if not path.is_file():
            raise FileNotFoundError(f"--config: no file {config}")
        text = yaml_keys.read_config(path, str(config))
        if not isinstance(text, dict):
            raise ValueError(f"--config {config}: expected a YAML mapping of train.py fit settings")
        composed = yaml_keys.compose(composed, text)
    return composed


def expert_iteration(config: str | Path | list[str | Path], rounds: int, output_dir: str | Path | None = None,
                     extra_args: list[str] | tuple[str, ...] = (),
                     schedule: list[str] | dict[str, list] | None = None) -> list[dict]:
    """Run (or finish) rounds 1 .. ``rounds`` of expert iteration; returns the rounds' records.

    ``config`` is one config or a list composed in order; ``output_dir`` defaults to the config's
    ``trainer.default_root_dir``; ``extra_args`` are ``train.py fit`` overrides applied to every round
    (not the settings in ``MANAGED``); ``schedule`` sets settings per round
    (``["model.data_weight=0.1,1.0"]``: round 1 0.1, later 1.0).
    """
    configs = [config] if isinstance(config, (str, Path)) else list(config)
    base = read_configs(configs)
    extra_args = list(extra_args)
    _check(base, " + ".join(map(str, configs)), extra_args)
    schedule = parse_schedule(schedule)
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    output_dir = Path(output_dir or (base.get("trainer") or {}).get("default_root_dir") or "runs/finetune")
    start_model = base["model"]["init_args"]["model"]
    reference = base["model"]["init_args"].get("reference") or start_model
    previous, records = start_model, []
    for k in range(1, rounds + 1):
        directory = round_dir(output_dir, k)
        record_path = directory / ROUND_RECORD
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            print(f"round {k}: finished earlier ({record_path}), skipped")
        else:
            record = _run_round(base, k, previous, reference, directory, [*extra_args, *scheduled_args(schedule, k)])
            atomic_write(record_path, json.dumps(record, indent=2) + "\n")
        records.append(record)
        previous = record["model"]
    atomic_write(output_dir / "rounds.json", json.dumps(records, indent=2) + "\n")
    return records


def _run_round(base: dict, k: int, previous: str, reference: str, directory: Path, extra_args: list[str]) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    # the fit's input; not config.yaml, which is LightningCLI's record of the effective config (with extra_args)
    config_path = directory / "fit_config.yaml"
    header = "".join(f"# applied on top by finetune.py for this round: {arg}\n" for arg in extra_args)
    config_path.write_text(header + yaml.safe_dump(round_config(base, k, previous, reference, directory), sort_keys=False))
    print(f"round {k}: generating from and fine-tuning {previous} -> {directory / 'model'}")
    start = time.time()
    main_train(["fit", "--config", str(config_path), *extra_args])
    export = directory / "model"
    if not (export / "config.json").is_file():
        raise RuntimeError(f"round {k}: the fit exported no model to {export}: it needs at least one validation "
                           f"(trainer.val_check_interval within trainer.max_steps)")
    generated = directory / "generated" / "summary.json"
    return {"round": k, "model": str(export), "generated_from": previous, "reference": reference,
            "generated": json.loads(generated.read_text()), "fit": checkpoints.metadata(export), "overrides": extra_args,
            "seconds": round(time.time() - start, 1)}


def parser() -> argparse.ArgumentParser:
    """The options of ``finetune.py``; the arguments it does not know are ``train.py fit`` overrides."""
    parser = argparse.ArgumentParser(prog="finetune.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, action="append",
                        help="train.py fit config of one round (GuidedFineTuning); repeat to compose configs")
    parser.add_argument("--rounds", type=int, required=True, help="total number of rounds (finished ones are skipped)")
    parser.add_argument("--output_dir", default=None, help="default: the config's trainer.default_root_dir")
    parser.add_argument("--schedule", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a train.py fit setting per round: V1 in round 1, V2 in round 2, the last value after "
                             "(repeatable; e.g. model.data_weight=0.1,1.0)")
    return parser


def main(args: list[str] | None = None) -> list[dict]:
    """``finetune.py``: the command line of :func:`expert_iteration`; other arguments go to every round's fit."""
    known, extra = parser().parse_known_args(args)
    return _one_line_errors(lambda: expert_iteration(known.config, known.rounds, known.output_dir, extra,
                                                     known.schedule))


def command() -> None:
    """The ``svdd-finetune`` console script (``finetune.py``)."""
    main()
