"""Convert a published GDSS (harryjo97/GDSS) ``.pth`` checkpoint into this package's safe format.

A GDSS checkpoint (``trainer.py``) is a dict with ``model_config`` (the run's YAML config as an
``easydict.EasyDict``), ``params_x`` / ``params_adj`` (``model_type`` plus constructor arguments),
``x_state_dict`` / ``adj_state_dict`` and, when saved by GDSS's trainer, ``ema_x`` / ``ema_adj``
(``{"decay", "num_updates", "shadow_params"}``, the shadow list following ``parameters()``; the
published QM9 and ZINC250k files have none). The result is ``x/`` and ``adj/`` checkpoint
directories (:func:`svdd_lightning.checkpoints.save`) and ``gdss_config.json``.

Reading never runs code by default: ``torch.load(weights_only=True)`` with ``easydict.EasyDict``
read as a plain ``OrderedDict`` (its pickle only sets items and attributes), which covers the
published files. Any other pickled class is refused unless ``trust_pickle`` is given.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import torch
from torch import nn

from ...checkpoints import copy_ema_shadow, save
from .score_networks import ScoreNetworkA, ScoreNetworkX, ScoreNetworkX_GMH

CLI = "python -m svdd_lightning.domains.molecules.gdss_checkpoint"
X_NETWORKS = {"ScoreNetworkX": ScoreNetworkX, "ScoreNetworkX_GMH": ScoreNetworkX_GMH}
ADJ_NETWORKS = {"ScoreNetworkA": ScoreNetworkA}
_DROP = object()  # what _plain returns for a value JSON cannot hold
# GDSS utils/mol_utils.py gen_mol: feature channel k is atom ATOMIC_NUMS[k]; the trailing 0 is "no atom".
ATOMIC_NUMS = {"QM9": [6, 7, 8, 9, 0], "ZINC250k": [6, 7, 8, 9, 15, 16, 17, 35, 53, 0]}
# Sampling settings are not in the checkpoint: GDSS config/sample_qm9.yaml, config/sample_zinc250k.yaml
# and, for the ScoreNetworkX_GMH ("v2") ZINC250k model, the README (scale_eps 0.8).
_SAMPLE = {"use_ema": False, "noise_removal": True, "probability_flow": False, "eps": 1.0e-4}
SAMPLERS = {
    ("QM9", "ScoreNetworkX"): {"predictor": "Reverse", "corrector": "Langevin", "snr": 0.2, "scale_eps": 0.7,
                               "n_steps": 1},
    ("ZINC250k", "ScoreNetworkX"): {"predictor": "Reverse", "corrector": "Langevin", "snr": 0.2, "scale_eps": 0.9,
                                    "n_steps": 1},
    ("ZINC250k", "ScoreNetworkX_GMH"): {"predictor": "Reverse", "corrector": "Langevin", "snr": 0.2,
                                        "scale_eps": 0.8, "n_steps": 1},
}


def _first_line(err: BaseException) -> str:
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
    line = found.group(1) if found else (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {line}".rstrip(": ")


def _read(path: Path, trust_pickle: bool) -> Any:
    """The checkpoint dict: weights-only unpickling, or full unpickling when the caller trusts the file."""
    try:
        with torch.serialization.safe_globals([(OrderedDict, "easydict.EasyDict")]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a damaged file; each becomes one line
        # torch words a refused global two ways: "... was not an allowed global" and, for modules it
        # blocks outright (os, posix, subprocess, ...), "unsupported GLOBAL posix.system whose module posix is blocked"
        found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)", str(err))
        if not found:
            raise ValueError(f"GDSS checkpoint {path} is not a readable torch checkpoint: {_first_line(err)}") from None
        if not trust_pickle:
            raise ValueError(f"GDSS checkpoint {path} holds pickled objects ({found.group(1)}) that are not loaded for "
                             f"safety: if you trust the file, convert it once with {CLI} {path} OUTPUT_DIR "
                             f"--trust-pickle (or trust_pickle=True)") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        raise ValueError(f"GDSS checkpoint {path} needs module {err.name!r} to unpickle: install it "
                         f"(pip install {err.name}) and convert again") from None
    except Exception as err:
        raise ValueError(f"GDSS checkpoint {path} could not be unpickled: {_first_line(err)}") from None


def _plain(value: Any) -> Any:
    """``value`` as JSON data (EasyDict and namespaces become dicts); :data:`_DROP` for what JSON cannot hold."""
    if isinstance(value, SimpleNamespace | argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        items = ((str(k), _plain(v)) for k, v in value.items())
        return {k: v for k, v in items if v is not _DROP}
    if isinstance(value, list | tuple):
        return [v for v in map(_plain, value) if v is not _DROP]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return _DROP


def _entry(ckpt: Mapping, key: str, path: Path) -> Any:
    if key not in ckpt:
        raise ValueError(f"GDSS checkpoint {path} has no {key!r}: not a checkpoint saved by GDSS's trainer")
    return ckpt[key]


def _network(params: dict, networks: dict[str, type[nn.Module]], role: str, path: Path) -> nn.Module:
    """Build the ``role`` network from GDSS's ``params_<role>`` (``model_type`` + constructor arguments)."""
    params = dict(params)
    model_type = params.pop("model_type", None)
    if model_type not in networks:
        raise ValueError(f"GDSS checkpoint {path}: params_{role} model_type {model_type!r} is unknown; "
                         f"expected one of {sorted(networks)}")
    try:
        return networks[model_type](**params)
    except TypeError as err:
        raise ValueError(f"GDSS checkpoint {path}: params_{role} do not fit {model_type}: {err}") from None


def _load_weights(network: nn.Module, state: Any, role: str, path: Path) -> None:
    """Load GDSS's state dict strictly (dropping DataParallel's ``module.`` prefix, as GDSS's loader does)."""
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"GDSS checkpoint {path}: {role}_state_dict is not a state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise ValueError(f"GDSS checkpoint {path}: {role}_state_dict does not match "
                         f"{type(network).__name__}: {detail}") from None


def _run_config(model_config: Any, params_x: Mapping, params_adj: Mapping, weights: dict[str, str]) -> dict:
    """GDSS's run config as JSON, with the atom list and sampler settings GDSS keeps elsewhere."""
    config = _plain(model_config)
    config = config if isinstance(config, dict) else {}
    data = config.setdefault("data", {})
    data.setdefault("max_node_num", params_adj.get("max_node_num"))
    data.setdefault("max_feat_num", params_x.get("max_feat_num"))
    if data.get("data") in ATOMIC_NUMS:
        data.setdefault("atomic_num_list", ATOMIC_NUMS[data["data"]])
    sampler = SAMPLERS.get((data.get("data"), params_x.get("model_type")))
    if sampler and "sampler" not in config:
        config["sampler"] = dict(sampler)
        config.setdefault("sample", dict(_SAMPLE))
    config["params_x"], config["params_adj"] = dict(params_x), dict(params_adj)
    config["weights"] = weights
    return config


def convert_gdss_checkpoint(path: str | Path, output_dir: str | Path, trust_pickle: bool = False,
                            use_ema: bool = True) -> dict[str, Path]:
    """Convert a GDSS ``.pth`` into ``output_dir/x``, ``output_dir/adj`` and ``output_dir/gdss_config.json``.

    The score networks are rebuilt from ``params_x`` / ``params_adj`` and loaded strictly; with
    ``use_ema`` the EMA weights replace the raw ones where the file has them. ``trust_pickle``
    allows full unpickling, which can run any code the file names: use it only for a file from a
    source you trust (e.g. one written by your own GDSS run), once, to produce the safe directories.
    ``gdss_config.json`` holds the run config as plain JSON (data, sde, model, train sections), the
    ``params_*``, which weights were used per network, ``data.atomic_num_list`` and, for QM9 and
    ZINC250k, GDSS's sampler settings. Returns the paths under keys ``x``, ``adj`` and ``config``.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"GDSS checkpoint not found: {file}")
    ckpt = _read(file, trust_pickle)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"GDSS checkpoint {file} holds a {type(ckpt).__name__}, not GDSS's checkpoint dict")
    built: dict[str, nn.Module] = {}
    weights: dict[str, str] = {}
    params: dict[str, dict] = {}
    for role, networks in (("x", X_NETWORKS), ("adj", ADJ_NETWORKS)):
        raw_params = _plain(_entry(ckpt, f"params_{role}", file))
        params[role] = raw_params if isinstance(raw_params, dict) else {}
        built[role] = _network(params[role], networks, role, file)
        _load_weights(built[role], _entry(ckpt, f"{role}_state_dict", file), role, file)
        ema = ckpt.get(f"ema_{role}")
        weights[role] = "ema" if use_ema and ema is not None else "raw"
        if weights[role] == "ema":
            # GDSS trains every parameter, so its list covers them all, the ones our networks freeze included
            copy_ema_shadow(list(built[role].parameters()), ema, f"GDSS checkpoint {file}: ema_{role}",
                            fix="; convert with use_ema=False (--no-ema) to use the raw weights")
    out = Path(output_dir)
    result = {role: save(network, out / role, metadata={"source": f"GDSS checkpoint {file.name}",
                                                        "gdss_model_type": params[role]["model_type"],
                                                        "weights": weights[role]})
              for role, network in built.items()}
    config = _run_config(ckpt.get("model_config"), params["x"], params["adj"], weights)
    result["config"] = out / "gdss_config.json"
    result["config"].write_text(json.dumps(config, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: convert one GDSS checkpoint; errors are one line on stderr with exit code 2."""
    parser = argparse.ArgumentParser(prog=CLI, description="Convert a GDSS .pth checkpoint into safe "
                                     "svdd_lightning checkpoint directories.")
    parser.add_argument("input", help="GDSS checkpoint (.pth)")
    parser.add_argument("output_dir", help="directory to write x/, adj/ and gdss_config.json into")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling (runs code named in the file): only for a file you trust")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even where EMA weights exist")
    args = parser.parse_args(argv)
    try:
        paths = convert_gdss_checkpoint(args.input, args.output_dir, trust_pickle=args.trust_pickle,
                                        use_ema=not args.no_ema)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = json.loads(paths["config"].read_text())
    for role in ("x", "adj"):
        print(f"wrote {paths[role]} ({config[f'params_{role}']['model_type']}, {config['weights'][role]} weights)")
    print(f"wrote {paths['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
