"""The samplers beyond SVDD against SVDD and Best-of-N at equal denoiser compute, on a shipped task.

    python benchmarks/frontier.py --task dna|utr_mrl|qed|sa|moses_qed|compress|flow_compress [--budgets 4 10 20] [--num-samples N]
        [--output-dir runs/frontier_<task>] [--extra --trainer.accelerator gpu ...]

Takes the task's compare config (model, reward, evaluation metrics, writer) and replaces its methods:
per budget M (SVDD-PM with M candidates; the other methods set to about its denoiser calls per sample)
Best-of-N, SVDD-PM, SVDD with the posterior-sampling value (``svdd_ps``),
beam search, nested-IS SMC and greedy refinement, and pretrained sampling once (in the first budget's
job). Each budget is one ``decode.py predict`` job in ``<output-dir>/m<M>`` (its outputs come with it,
and a killed job resumes); run budgets in separate
commands if one is too long. Then merges every finished job of the task into
``benchmarks/results/frontier_<task>_<accelerator>.json`` and two plots: reward (median, top 10%) against
denoiser calls per sample and against wall seconds (``..._<accelerator>.png``), and reward against the
task's naturalness measures (``..._naturalness_<accelerator>.png``). Every setting is written in the JSON.
Nothing is tuned on the evaluation metrics: the temperatures are set a priori (see TASKS).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svdd_lightning.yaml_keys import read_config  # noqa: E402

METHODS = ("best_of_n", "svdd_pm", "svdd_ps", "beam", "nested_is", "refinement")


@dataclass
class Task:
    """How a compare config's methods are replaced for one task.

    ``bon_per_m``: Best-of-N's N per SVDD-PM candidate (SVDD-PM's measured denoiser calls over pretrained
    sampling's, per candidate, from the compare configs). ``select_every`` / ``x0_steps``: SVDD-PM's settings
    in the compare config (shared by beam search, nested IS and refinement). ``ps``: the posterior-sampling
    value's arguments, ``ps_select_every`` and ``ps_m_per_m`` its SVDD's selection interval and candidates
    per SVDD-PM candidate, so that its denoiser calls match (the draws of continuous models cost rollout
    calls). ``alpha``: nested IS's temperature, a fifth of pretrained sampling's reward spread (top 10%
    minus median) in the committed compare results, not tuned. ``naturalness``: (summary key, label) pairs
    plotted against the reward. ``ode``: a flow model, whose pretrained sampling is run by its ODE too (noise
    level 0; the compare config's level is the SDE's), in the job ``ode``.
    """

    config: str
    bon_per_m: float
    alpha: float
    ps: dict
    naturalness: list[tuple[str, str]]
    select_every: int = 1
    x0_steps: int = 1
    ps_select_every: int = 1
    ps_m_per_m: float = 1.0
    evaluation: list[str] = field(default_factory=list)
    ode: bool = False


TASKS = {
    "dna": Task("configs/dna/compare.yaml", bon_per_m=1.1, alpha=0.6, ps={"num_samples": 4},
                naturalness=[("3mer_pearson", "3-mer correlation with held-out HepG2 regions"),
                             ("elbo.median", "median ELBO (nats per sequence)")],
                evaluation=["eval_oracle.median", "eval_oracle.fraction_above_0"]),
    "utr_mrl": Task("configs/utr/compare_mrl.yaml", bon_per_m=1.2, alpha=0.2, ps={"num_samples": 4},
                    naturalness=[("3mer_pearson", "3-mer correlation with held-out 5'UTRs"),
                                 ("elbo.median", "median ELBO (nats per sequence)")]),
    "qed": Task("configs/molecules/compare_qed.yaml", bon_per_m=1.5, alpha=0.02, select_every=5, x0_steps=6,
                ps={"num_samples": 2, "x0_steps": 4}, ps_select_every=5, ps_m_per_m=3 / 3.2,
                naturalness=[("validity", "validity"), ("novelty", "novelty")], evaluation=["sa.median"]),
    "sa": Task("configs/molecules/compare_sa.yaml", bon_per_m=1.2, alpha=0.04, select_every=10, x0_steps=6,
               ps={"num_samples": 2, "x0_steps": 4}, ps_select_every=10, ps_m_per_m=2.5 / 2.6,
               naturalness=[("validity", "validity"), ("novelty", "novelty")], evaluation=["qed.median"]),
    # nested IS's alpha from MOSES test's QED spread (median 0.82, top 10% 0.92), no compare results yet
    "moses_qed": Task("configs/molecules/compare_qed_moses.yaml", bon_per_m=1.0, alpha=0.02, ps={"num_samples": 4},
                      naturalness=[("validity", "validity"), ("novelty", "novelty"), ("fcd_test", "FCD to MOSES test")],
                      evaluation=["sa.median"]),
    "compress": Task("configs/images/compare_compress.yaml", bon_per_m=1.0, alpha=0.02,
                     ps={"num_samples": 2, "x0_steps": 2}, ps_select_every=2, ps_m_per_m=0.5,
                     naturalness=[("classifier_confidence.median", "classifier confidence (median)"),
                                  ("classifier_confidence.fraction_above_0.9", "confident digits (p > 0.9)")]),
    "flow_compress": Task("configs/images/compare_compress_flow.yaml", bon_per_m=1.0, alpha=0.02,
                          ps={"num_samples": 2, "x0_steps": 2}, ps_select_every=2, ps_m_per_m=0.5, ode=True,
                          naturalness=[("classifier_confidence.median", "classifier confidence (median)"),
                                       ("classifier_confidence.fraction_above_0.9", "confident digits (p > 0.9)")]),
}


def _spec(name: str, **init_args) -> dict:
    return {"class_path": f"svdd_lightning.{name}", "init_args": init_args}


def budget_methods(task: Task, m: int) -> dict:
    """The methods of budget ``m`` (SVDD-PM with m candidates; the others at about its denoiser calls)."""
    pm = _spec("PosteriorMeanValue", x0_steps=task.x0_steps)
    every = task.select_every
    width, children = (2, max(m // 2, 1)) if m < 20 else (4, m // 4)
    half = max(m // 2, 1)
    return {
        "best_of_n": _spec("BestOfN", n=max(round(task.bon_per_m * m), 1)),
        "svdd_pm": _spec("SVDD", value=pm, num_candidates=m, alpha=0.0, select_every=every),
        "svdd_ps": _spec("SVDD", value=_spec("PosteriorSamplingValue", **task.ps), alpha=0.0,
                         num_candidates=max(round(task.ps_m_per_m * m), 1), select_every=task.ps_select_every),
        "beam": _spec("BeamSearch", value=pm, beam_width=width, num_candidates=children, select_every=every),
        "nested_is": _spec("NestedIS", value=pm, num_candidates=m, alpha=task.alpha, ess_threshold=0.5,
                           resampling="systematic", select_every=every),
        "refinement": _spec("Refinement", rounds=2, noise_level=0.5, acceptance="greedy",
                            decoder=_spec("SVDD", value=pm, num_candidates=half, alpha=0.0, select_every=every)),
    }


def derive_config(compare: dict, methods: dict) -> dict:
    config = copy.deepcopy(compare)
    config["model"]["methods"] = methods
    return config


def run_job(config: dict, out: Path, num_samples: int, extra: list[str]) -> None:
    """One resumable ``decode.py predict`` job of ``config`` in ``out`` (refused if ``out`` holds another config)."""
    path, text = out / "frontier.yaml", yaml.safe_dump(config, sort_keys=False)
    if path.exists() and path.read_text() != text:
        sys.exit(f"error: {out} holds a different job (its frontier.yaml differs); remove it or pass another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    from svdd_lightning.lightning.cli import main_decode

    with contextlib.chdir(ROOT), mock.patch.object(sys, "argv", sys.argv[:1]):
        main_decode(args=["predict", "--config", str(path), "--output_dir", str(out),
                          "--data.num_samples", str(num_samples), *extra])


def lookup(entry: dict, key: str) -> float | None:
    value = entry
    for part in key.split(".", 1):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def batch_seconds(job: Path) -> dict[str, list[tuple[int, float]]]:
    """(samples, seconds) of every batch of every method of a decode job, from its parts files."""
    out: dict[str, list[tuple[int, float]]] = {}
    for part in sorted((job / "parts").glob("*.jsonl")):
        for line in part.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            for stat in record["stats"]:
                out.setdefault(stat["method"], []).append((stat["n"], stat["seconds"]))
    return out


def row(task: Task, method: str, budget: int | None, entry: dict, settings: dict | None,
        batches: list[tuple[int, float]]) -> dict:
    """One method's figures. ``wall_seconds`` is the job's measured total; ``wall_seconds_fastest_batch`` the
    fastest batch's seconds per sample times the samples, which discounts other processes that shared the
    machine during some batches (the headline wall time)."""
    per = entry["per_sample"]
    fastest = min(seconds / n for n, seconds in batches) * entry["n"] if batches else entry["wall_seconds"]
    out = {"method": method, "budget": budget, "n": entry["n"], "median": entry["reward"]["median"],
           "top10": entry["reward"]["top10"], "top20": entry["reward"]["top20"],
           "nfe_per_sample": per["denoiser_calls"], "reward_calls_per_sample": per["reward_calls"],
           "value_calls_per_sample": per["value_calls"], "wall_seconds": entry["wall_seconds"],
           "wall_seconds_fastest_batch": fastest, "distinct_fraction": entry.get("distinct_fraction")}
    for key, _ in task.naturalness:
        out[key] = lookup(entry, key)
    for key in task.evaluation:
        out[key] = lookup(entry, key)
    if settings is not None:
        out["settings"] = settings
    return out


def collect(task: Task, out: Path) -> list[dict]:
    """Rows of every finished job under ``out``: pretrained, then each budget's methods."""
    rows, pretrained = [], []
    budgets = sorted(int(p.parent.name[1:]) for p in out.glob("m*/summary.json") if p.parent.name[1:].isdigit())
    for m in budgets:
        summary = json.loads((out / f"m{m}" / "summary.json").read_text())
        methods, batches = budget_methods(task, m), batch_seconds(out / f"m{m}")
        rows += [row(task, name, m, summary[name], methods[name], batches.get(name, [])) for name in METHODS
                 if name in summary]
        if "pretrained" in summary:
            pretrained.append(row(task, "pretrained", None, summary["pretrained"], None, batches.get("pretrained", [])))
    if (out / "ode" / "summary.json").is_file():
        summary = json.loads((out / "ode" / "summary.json").read_text())
        pretrained.insert(1, row(task, "pretrained_ode", None, summary["pretrained"], None,
                                 batch_seconds(out / "ode").get("pretrained", [])))
    return pretrained[:2] + rows


def targets(rows: list[dict], mid: int = 10) -> dict:
    """The issue's targets, from the rows: at SVDD-PM M = 10's budget, the best median against SVDD-PM's;
    per budget, Best-of-N's gain over pretrained sampling against the best method's."""
    pre = next((r for r in rows if r["method"] == "pretrained"), None)
    out: dict = {}
    at = {r["method"]: r for r in rows if r["budget"] == mid}
    if "svdd_pm" in at:
        best = max((r for r in at.values() if r["method"] != "svdd_pm"), key=lambda r: r["median"], default=None)
        if best is not None:
            out[f"best_at_m{mid}"] = {"method": best["method"], "median": best["median"],
                                      "svdd_pm_median": at["svdd_pm"]["median"],
                                      "beats_svdd_pm": best["median"] > at["svdd_pm"]["median"]}
    if pre is not None:
        for m in sorted({r["budget"] for r in rows if r["budget"] is not None}):
            budget = {r["method"]: r for r in rows if r["budget"] == m}
            if "best_of_n" not in budget:
                continue
            best = max(budget.values(), key=lambda r: r["median"])
            gain_bon, gain_best = budget["best_of_n"]["median"] - pre["median"], best["median"] - pre["median"]
            out[f"gain_m{m}"] = {"best_method": best["method"], "best_gain": gain_best, "best_of_n_gain": gain_bon,
                                 "best_of_n_at_most_half": gain_bon <= gain_best / 2}
    return out


def format_table(rows: list[dict], task: Task) -> str:
    extra = [k for k, _ in task.naturalness] + task.evaluation
    head = (f"{'budget':>6}  {'method':<12}{'n':>5}{'median':>9}{'top10%':>9}{'NFE':>9}{'reward calls':>13}"
            f"{'wall s':>8}{'(total)':>8}")
    lines = [head + "".join(f"{k[:16]:>18}" for k in extra)]
    for r in rows:
        cells = "".join(f"{'-' if r.get(k) is None else format(r[k], '.3f'):>18}" for k in extra)
        lines.append(f"{'-' if r['budget'] is None else r['budget']:>6}  {r['method']:<12}{r['n']:>5}{r['median']:>9.3f}"
                     f"{r['top10']:>9.3f}{r['nfe_per_sample']:>9.0f}{r['reward_calls_per_sample']:>13.0f}"
                     f"{r['wall_seconds_fastest_batch']:>8.0f}{r['wall_seconds']:>8.0f}" + cells)
    return "\n".join(lines)


def markdown_table(rows: list[dict], task: Task) -> str:
    """The rows as a markdown table (for docs/samplers.md)."""
    extra = [(k, label) for k, label in task.naturalness] + [(k, k) for k in task.evaluation]
    lines = ["| budget (SVDD-PM M) | method | NFE / sample | reward median | top 10% | reward calls / sample | "
             "wall s (total) | distinct | " + " | ".join(label for _, label in extra) + " |",
             "|" + "---|" * (8 + len(extra))]
    for r in rows:
        cells = [f"{r[k]:.3f}" if r.get(k) is not None else "–" for k, _ in extra]
        lines.append(f"| {'–' if r['budget'] is None else r['budget']} | {r['method']} | {r['nfe_per_sample']:.0f} | "
                     f"{r['median']:.3f} | {r['top10']:.3f} | {r['reward_calls_per_sample']:.0f} | "
                     f"{r['wall_seconds_fastest_batch']:.0f} ({r['wall_seconds']:.0f}) | {r['distinct_fraction']:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], task: Task, title: str, path: Path, naturalness_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    pre = next((r for r in rows if r["method"] == "pretrained"), None)
    names = [m for m in METHODS if any(r["method"] == m for r in rows)]
    colours = {m: f"C{i}" for i, m in enumerate(names)}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, (key, x, label) in zip(axes, [("median", "nfe_per_sample", "denoiser calls per sample"),
                                          ("top10", "nfe_per_sample", "denoiser calls per sample"),
                                          ("median", "wall_seconds_fastest_batch",
                                           "wall seconds (all samples; fastest batch x batches)")]):
        for m in names:
            pts = sorted((r[x], r[key]) for r in rows if r["method"] == m)
            ax.plot(*zip(*pts), "o-", color=colours[m], label=m)
        if pre is not None:
            ax.plot([pre[x]], [pre[key]], "k*", markersize=11, label="pretrained")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel(f"reward {'median' if key == 'median' else 'top 10%'}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(task.naturalness), figsize=(6 * len(task.naturalness), 4.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], task.naturalness):
        for r in rows:
            if r.get(key) is None:
                continue
            baseline = r["budget"] is None  # pretrained sampling (and a flow's ODE sampling)
            colour = {"pretrained": "k", "pretrained_ode": "grey"}.get(r["method"]) or colours[r["method"]]
            ax.scatter(r[key], r["median"], color=colour, marker="*" if baseline else "o",
                       s=30 + 4 * (r["budget"] or 4))
            ax.annotate(r["method"] if r["budget"] is None else f"{r['method']} {r['budget']}", (r[key], r["median"]),
                        fontsize=6, alpha=0.7)
        ax.set_xlabel(label)
        ax.set_ylabel("reward median")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}; marker size: budget (SVDD-PM's M)", fontsize=10)
    fig.tight_layout()
    fig.savefig(naturalness_path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--budgets", type=int, nargs="*", default=[4, 10, 20],
                        help="SVDD-PM's numbers of candidates M; the other methods match its denoiser calls")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--config", default=None, help="the compare config (default: the task's)")
    parser.add_argument("--output-dir", default=None, help="decode jobs (default: runs/frontier_<task>)")
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--accelerator", default="cpu", help="names the results files")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="(last) overrides passed through to decode.py, e.g. --extra --data.batch_size 16")
    args = parser.parse_args(argv)
    if any(m < 2 for m in args.budgets):
        sys.exit(f"error: --budgets must be >= 2 (SVDD-PM's number of candidates), got {args.budgets}")

    task = TASKS[args.task]
    compare = read_config(ROOT / (args.config or task.config))
    out = Path(args.output_dir or ROOT / "runs" / f"frontier_{args.task}").resolve()
    start, ran = time.time(), []
    # pretrained sampling joins the command's first budget job unless a finished job holds it already
    with_pretrained = not any("pretrained" in json.loads(p.read_text()) for p in out.glob("m*/summary.json"))
    for i, m in enumerate(args.budgets):
        if not (out / f"m{m}" / "summary.json").is_file():
            methods = budget_methods(task, m)
            if i == 0 and with_pretrained:
                methods = {"pretrained": _spec("PretrainedSampling"), **methods}
            run_job(derive_config(compare, methods), out / f"m{m}", args.num_samples, args.extra)
            ran.append(m)
    if task.ode and not (out / "ode" / "summary.json").is_file():
        ode = derive_config(compare, {"pretrained": _spec("PretrainedSampling")})
        ode["model"]["model_args"] = {**ode["model"].get("model_args", {}), "noise_level": 0.0}
        run_job(ode, out / "ode", args.num_samples, args.extra)

    rows = collect(task, out)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    stem = f"frontier_{args.task}_{args.accelerator}"
    title = (f"{args.task}: {args.config or task.config}, {sorted({r['n'] for r in rows})} samples per method, "
             f"{args.accelerator}")
    # every command that wrote this file, with the budgets it decoded (none: it only merged finished jobs)
    previous = json.loads((results / f"{stem}.json").read_text()) if (results / f"{stem}.json").is_file() else {}
    commands = previous.get("commands", [])
    commands.append({"budgets_decoded": ran, "num_samples": args.num_samples, "extra": args.extra,
                     "seconds": round(time.time() - start, 1)})
    result = {"task": args.task, "config": args.config or task.config,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "accelerator": args.accelerator},
              "commands": commands, "targets": targets(rows), "rows": rows}
    (results / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, task, title, results / f"{stem}.png", results / f"{stem}_naturalness.png")
    print(f"\n{title}\n{format_table(rows, task)}\n\n{markdown_table(rows, task)}\n\n"
          f"{json.dumps(result['targets'], indent=1)}")
    print(f"written: {results / stem}.json, .png, _naturalness.png")


if __name__ == "__main__":
    main()
