"""Ablation of SVDD's number of candidates M (the paper's Figure 4: reward against M).

    python benchmarks/ablate_m.py --config configs/dna/compare.yaml --method svdd_pm --m 1 2 4 8 16 32 \\
        --num_samples 256 --output_dir runs/ablate_m_dna --baseline pretrained [--extra --trainer.accelerator gpu]

Keeps one SVDD method of a compare config (and the ``--baseline`` methods), writes a derived config
``<output_dir>/ablation_m.yaml`` whose methods are ``<method>_m<M>`` (the method with num_candidates = M)
plus the baselines, and runs it as one ``decode.py predict`` job (the writer's outputs come with it and a
killed run resumes). Then prints per M the median, top-20% and top-10% reward, denoiser calls (NFE) and
reward calls per sample and wall seconds, and writes ``<output_dir>/ablation_m.json`` and
``<output_dir>/ablation_m.png``. Paths in the config and in ``--extra`` are relative to the repository root.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import sys
import time
from pathlib import Path
from unittest import mock

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning import SVDD  # noqa: E402
from svdd_lightning.yaml_keys import read_config  # noqa: E402


def _is_svdd(spec) -> bool:
    module, _, name = (spec.get("class_path", "") if isinstance(spec, dict) else str(spec)).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, SVDD)


def method_name(method: str, m: int) -> str:
    return f"{method}_m{m}"


def derive_config(compare: dict, method: str, ms: list[int], baselines: list[str]) -> dict:
    """A copy of the compare config whose ``model.methods`` are ``<method>_m<M>`` per M, then the baselines.

    Raises ValueError (one line) if ``method`` is absent or not an SVDD method, a baseline is absent, or an M < 1.
    """
    methods = compare.get("model", {}).get("methods") or {}
    if method not in methods:
        raise ValueError(f"method {method!r} is not in the config's model.methods ({', '.join(methods)})")
    if not _is_svdd(methods[method]):
        raise ValueError(f"method {method!r} is not an SVDD method (class_path svdd_lightning.SVDD)")
    missing = [b for b in baselines if b not in methods]
    if missing:
        raise ValueError(f"baseline {missing[0]!r} is not in the config's model.methods ({', '.join(methods)})")
    if any(m < 1 for m in ms):
        raise ValueError(f"--m values must be >= 1, got {ms}")
    config = copy.deepcopy(compare)
    spec = methods[method] if isinstance(methods[method], dict) else {"class_path": methods[method]}
    derived = {}
    for m in sorted(set(ms)):
        entry = copy.deepcopy(spec)
        entry.setdefault("init_args", {})["num_candidates"] = m
        derived[method_name(method, m)] = entry
    derived.update({b: copy.deepcopy(methods[b]) for b in baselines})
    config["model"]["methods"] = derived
    return config


def _row(name: str, entry: dict, m: int | None) -> dict:
    reward, per_sample = entry["reward"], entry["per_sample"]
    return {"m": m, "method": name, "n": entry["n"], "median": reward["median"], "top20": reward["top20"],
            "top10": reward["top10"], "nfe_per_sample": per_sample["denoiser_calls"],
            "reward_calls_per_sample": per_sample["reward_calls"], "seconds": entry["wall_seconds"]}


def ablation_table(summary: dict, method: str, ms) -> list[dict]:
    """One row per M (ascending) from a decode run's summary.json: reward quantiles, compute per sample, seconds."""
    missing = [method_name(method, m) for m in ms if method_name(method, m) not in summary]
    if missing:
        raise ValueError(f"summary.json has no results for {', '.join(missing)}")
    return [_row(method_name(method, m), summary[method_name(method, m)], m) for m in sorted(set(ms))]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'M':>5}  {'method':<18}{'median':>9}{'top20%':>9}{'top10%':>9}{'NFE/sample':>12}"
             f"{'reward calls':>14}{'seconds':>9}"]
    for r in rows:
        lines.append(f"{'-' if r['m'] is None else r['m']:>5}  {r['method']:<18}{r['median']:>9.3f}{r['top20']:>9.3f}"
                     f"{r['top10']:>9.3f}{r['nfe_per_sample']:>12.1f}{r['reward_calls_per_sample']:>14.1f}"
                     f"{r['seconds']:>9.1f}")
    return "\n".join(lines)


def plot(path: Path, method: str, rows: list[dict], baselines: list[dict], title: str) -> None:
    """Median and top-10% reward against M (log2 axis); each baseline as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ms = [r["m"] for r in rows]
    ax.plot(ms, [r["median"] for r in rows], "o-", color="C0", label=f"{method} median")
    ax.plot(ms, [r["top10"] for r in rows], "s--", color="C0", alpha=0.6, label=f"{method} top 10%")
    for i, b in enumerate(baselines, start=1):
        ax.axhline(b["median"], color=f"C{i}", linestyle="-", label=f"{b['method']} median")
        ax.axhline(b["top10"], color=f"C{i}", linestyle="--", alpha=0.6, label=f"{b['method']} top 10%")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.set_xlabel("number of candidates M")
    ax.set_ylabel("reward")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a compare config, e.g. configs/dna/compare.yaml")
    parser.add_argument("--method", default="svdd_pm", help="the SVDD method of the config to ablate")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="numbers of candidates")
    parser.add_argument("--num_samples", type=int, default=256)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--baseline", nargs="*", default=[], help="methods of the config kept as baselines")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="(last) overrides passed through to decode.py, e.g. --extra --data.batch_size 16")
    args = parser.parse_args(argv)

    out = Path(args.output_dir).resolve()
    try:
        derived = derive_config(read_config(args.config), args.method, args.m, args.baseline)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    config_path = out / "ablation_m.yaml"
    text = yaml.safe_dump(derived, sort_keys=False)
    if config_path.exists() and config_path.read_text() != text:
        sys.exit(f"error: {out} holds a different ablation (its ablation_m.yaml differs); "
                 "remove it or pass another --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    config_path.write_text(text)

    from svdd_lightning.lightning.cli import main_decode

    start = time.time()
    with contextlib.chdir(ROOT), mock.patch.object(sys, "argv", sys.argv[:1]):  # decode sees only `args`
        main_decode(args=["predict", "--config", str(config_path), "--output_dir", str(out),
                          "--data.num_samples", str(args.num_samples), *args.extra])
    total = time.time() - start

    summary = json.loads((out / "summary.json").read_text())
    rows = ablation_table(summary, args.method, args.m)
    baselines = [_row(b, summary[b], None) for b in args.baseline]
    print(f"\nM ablation of {args.method} ({args.config}, {args.num_samples} samples)")
    print(format_table(rows + baselines))
    result = {"config": args.config, "method": args.method, "num_samples": args.num_samples, "extra": args.extra,
              "total_seconds": round(total, 1), "rows": rows, "baselines": baselines}
    (out / "ablation_m.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(out / "ablation_m.png", args.method, rows, baselines, f"{args.config}: {args.num_samples} samples per method")
    print(f"written: {out / 'ablation_m.json'}, {out / 'ablation_m.png'}")


if __name__ == "__main__":
    main()
