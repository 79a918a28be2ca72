"""Writes decoding results as they come and merges them into the run's outputs at the end.

During prediction every process appends each finished batch to ``parts/rank<R>.jsonl`` (flushed,
so a killed run loses at most the batch in flight and resumes from the rest). When prediction ends,
global rank 0 merges all parts, keeps one row per (method, index), and writes:

- per method, the files of its samples (``sample_files``: ``<method>.fasta`` by default; SMILES and
  molecule grids for molecules; PNGs and a grid for images);
- ``samples.csv``: one row per sample (method, index, sample, reward, evaluation columns);
- ``summary.json``: per method n, reward and evaluation quantiles, set metrics, compute per sample,
  wall seconds;
- ``reward_histogram.png``: the reward (and evaluation-score) distributions per method.

The parts hold each sample in the JSON-able form ``sample_files.encode`` gives (images: base64 PNGs);
the merge decodes them back, so sample files and set metrics get the samples themselves.
"""
from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from abc import ABC, abstractmethod

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ..evaluation import distinct_fraction, quantile_summary
from .decoding import PARTS

COMPUTE_FIELDS = ("denoiser_calls", "gradient_calls", "reward_calls", "reward_failures", "value_calls")


class SampleFiles(ABC):
    """Writes one method's samples in their domain's formats; ``column`` names them in samples.csv.

    ``encode``/``decode`` convert samples to and from the JSON-able form stored in the parts files,
    ``csv_value`` gives a sample's entry in samples.csv; all three default to the sample itself.
    """

    column: str = "sample"

    def encode(self, sample: Any) -> Any:
        """The JSON-able form ``sample`` is stored in; distinct samples need distinct stored forms."""
        return sample

    def decode(self, stored: Any) -> Any:
        """The sample of its stored form (the inverse of :meth:`encode`)."""
        return stored

    def csv_value(self, method: str, row: dict) -> Any:
        """The entry of ``row`` (a decoded row of ``method``) in the ``column`` of samples.csv."""
        return row["sample"]

    @abstractmethod
    def write(self, output_dir: Path, method: str, rows: list[dict]) -> None:
        """``rows``: the method's rows sorted by index, each with ``index``, ``sample`` and ``reward``."""


class FastaFiles(SampleFiles):
    """``<method>.fasta``, one record per design with its reward in the header."""

    column = "sequence"

    def write(self, output_dir: Path, method: str, rows: list[dict]) -> None:
        with open(output_dir / f"{method}.fasta", "w") as handle:
            for r in rows:
                handle.write(f">{method}_{r['index']} reward={r['reward']:.4f}\n{r['sample']}\n")


class DesignWriter(BasePredictionWriter):
    """Prediction writer for :class:`DecodingModule` results.

    Args:
        output_dir: where the outputs go (``--output_dir`` on the command line).
        set_metrics: name -> callable on a method's list of samples returning one float
            (e.g. 3-mer correlation with held-out sequences).
        sample_files: the per-method sample files (default :class:`FastaFiles`).
    """

    def __init__(self, output_dir: str = "results", set_metrics: dict[str, Callable[[list], float]] | None = None,
                 sample_files: SampleFiles | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.set_metrics = set_metrics or {}
        self.sample_files = sample_files or FastaFiles()

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        parts = self.output_dir / PARTS
        parts.mkdir(parents=True, exist_ok=True)
        rows = [{**r, "sample": self.sample_files.encode(r["sample"])} for r in prediction["rows"]]
        _append_line(parts / f"rank{trainer.global_rank}.jsonl", json.dumps({**prediction, "rows": rows}))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            summary = write_outputs(self.output_dir, list(pl_module.metrics), self.set_metrics,
                                    {k: getattr(m, "threshold", None) for k, m in pl_module.metrics.items()},
                                    self.sample_files)
            print(format_summary(summary))
        trainer.strategy.barrier()


def _append_line(path: Path, line: str) -> None:
    """Append a line, first ending a line that a killed run left cut short."""
    with open(path, "ab+") as handle:
        handle.seek(0, 2)
        if handle.tell():
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write((line + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def _read_parts(output_dir: Path) -> tuple[list[dict], list[dict]]:
    rows: dict[tuple[str, int], dict] = {}
    stats: list[dict] = []
    for part in sorted((output_dir / PARTS).glob("*.jsonl")):
        for line in part.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            for row in record["rows"]:
                rows[(row["method"], row["index"])] = row
            stats.extend(record["stats"])
    return sorted(rows.values(), key=lambda r: (r["method"], r["index"])), stats


def write_outputs(output_dir: Path, metric_names: list[str], set_metrics: dict[str, Callable[[list], float]],
                  thresholds: dict[str, float | None], sample_files: SampleFiles | None = None) -> dict:
    """Merge the parts under ``output_dir`` into sample files, CSV, JSON summary and histogram.

    ``distinct_fraction`` compares the samples' stored forms (``sample_files.encode``), not their reprs.
    """
    sample_files = sample_files or FastaFiles()
    rows, stats = _read_parts(output_dir)
    by_method: dict[str, list[dict]] = defaultdict(list)
    stored: dict[str, list] = defaultdict(list)
    for row in rows:
        stored[row["method"]].append(row["sample"])
        by_method[row["method"]].append({**row, "sample": sample_files.decode(row["sample"])})

    for method, method_rows in by_method.items():
        sample_files.write(output_dir, method, method_rows)
    with open(output_dir / "samples.csv", "w", newline="") as handle:
        column = sample_files.column
        writer = csv.DictWriter(handle, fieldnames=["method", "index", column, "reward", *metric_names])
        writer.writeheader()
        for method, method_rows in by_method.items():
            for r in method_rows:
                writer.writerow({"method": method, "index": r["index"], column: sample_files.csv_value(method, r),
                                 "reward": r["reward"], **{k: r.get(k) for k in metric_names}})

    summary = {}
    for method, method_rows in by_method.items():
        samples = [r["sample"] for r in method_rows]
        entry: dict[str, Any] = {"n": len(method_rows),
                                 "reward": quantile_summary(torch.tensor([r["reward"] for r in method_rows]))}
        for name in metric_names:
            values = torch.tensor([float("nan") if r.get(name) is None else r[name] for r in method_rows])
            entry[name] = quantile_summary(values)
            if thresholds.get(name) is not None:
                entry[name][f"fraction_above_{thresholds[name]:g}"] = float((values > thresholds[name]).double().mean())
        for name, fn in set_metrics.items():
            entry[name] = fn(samples)
        entry["distinct_fraction"] = distinct_fraction(stored[method])
        method_stats = [s for s in stats if s["method"] == method]
        n_stat = sum(s["n"] for s in method_stats)
        entry["per_sample"] = {f: sum(s[f] for s in method_stats) / max(n_stat, 1) for f in COMPUTE_FIELDS}
        entry["reward_failures"] = sum(s["reward_failures"] for s in method_stats)  # floored evaluations
        entry["wall_seconds"] = sum(s["seconds"] for s in method_stats)
        entry["samples_per_second"] = n_stat / entry["wall_seconds"] if entry["wall_seconds"] else float("nan")
        summary[method] = entry
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _histogram(output_dir / "reward_histogram.png", by_method, ["reward", *metric_names[:1]])
    return summary


def _histogram(path: Path, by_method: dict[str, list[dict]], columns: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns), 4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        values = {m: torch.tensor([r[column] for r in rows if r.get(column) is not None], dtype=torch.float64)
                  for m, rows in by_method.items()}
        finite = torch.cat([v[torch.isfinite(v)] for v in values.values()])
        edges = torch.linspace(float(finite.min()), float(finite.max()) + 1e-9, 41).tolist() if finite.numel() else 40
        for method, v in values.items():
            v = v[torch.isfinite(v)]
            ax.hist(v.tolist(), bins=edges, alpha=0.45, label=f"{method} (median {quantile_summary(v)['median']:.2f})")
        ax.set_xlabel(column)
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_summary(summary: dict) -> str:
    """A plain-text table of the headline figures per method."""
    lines = [f"{'method':<14}{'n':>6}{'reward med':>12}{'top10%':>9}{'NFE/sample':>12}{'reward calls':>14}{'seconds':>9}"]
    for method, e in summary.items():
        lines.append(f"{method:<14}{e['n']:>6}{e['reward']['median']:>12.3f}{e['reward']['top10']:>9.3f}"
                     f"{e['per_sample']['denoiser_calls']:>12.1f}{e['per_sample']['reward_calls']:>14.1f}"
                     f"{e['wall_seconds']:>9.1f}")
    return "\n".join(lines)
