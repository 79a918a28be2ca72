"""Writes decoding results as they come and merges them into the run's outputs at the end.

Before any work, global rank 0 checks that the output folder is writable, takes its lock
(``.decode.lock``: host and pid of the holder) and compares each method's settings with those recorded
in ``fingerprints.json``: a method decoded there with other settings is refused (``overwrite``
discards its results instead), a method with the same settings resumes, a new method is decoded.

During prediction every process appends each method's results for a batch to ``parts/rank<R>.jsonl``
as soon as that method has decoded the batch (flushed, so a killed run loses at most one method's
batch in flight and resumes from the rest); each entry carries the method's settings' fingerprint.
When prediction ends, global rank 0 merges the parts, keeps one row per requested (method, index)
decoded with this run's settings, and writes:

- per method, the files of its samples (``sample_files``: the model's choice, see
  :mod:`svdd_lightning.sample_files`; SMILES and molecule grids for molecules; PNGs and a grid for images);
- ``samples.csv``: one row per sample (method, index, sample, reward, evaluation columns);
- ``summary.json``: per method n, reward and evaluation quantiles (with the count of samples an
  evaluation could not score), set metrics, compute per sample, wall seconds;
- ``reward_histogram.png``: the reward (and first evaluation score) distributions per method.

A requested (method, index) missing from the parts (e.g. another node wrote it into its own
folder) fails the run with a one-line count. The parts hold each sample in the JSON-able form
``sample_files.encode`` gives (images: base64 PNGs); the merge decodes them back.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ..core.reward import GuardedReward
from ..evaluation import SampleMetric, distinct_fraction, quantile_summary
from ..sample_files import FastaFiles, JsonlFiles, SampleFiles, sample_files_for
from .decoding import PARTS
from .fingerprint import differences, digest
from .folders import (ReportedByRankZero, acquire_lock, atomic_write, check_writable, read_json, release_lock,
                      takeover_line, write_error)

__all__ = ["DesignWriter", "FastaFiles", "JsonlFiles", "SampleFiles", "write_outputs", "format_summary"]

COMPUTE_FIELDS = ("denoiser_calls", "gradient_calls", "reward_calls", "reward_failures", "value_calls")
FINGERPRINTS = "fingerprints.json"


class DesignWriter(Callback):
    """Prediction writer for :class:`DecodingModule` results.

    Args:
        output_dir: where the outputs go (``--output_dir`` on the command line).
        set_metrics: name -> callable on a method's list of samples returning one float
            (e.g. 3-mer correlation with held-out sequences).
        sample_files: the per-method sample files (default: the model's ``sample_files()``, else
            :class:`~svdd_lightning.sample_files.JsonlFiles`).
        overwrite: discard the folder's results of methods whose settings changed, and decode them
            again (``--overwrite``); without it such a run is refused.
    """

    def __init__(self, output_dir: str = "results", set_metrics: dict[str, Callable[[list], float]] | None = None,
                 sample_files: SampleFiles | None = None, overwrite: bool = False) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.set_metrics = set_metrics or {}
        self.sample_files = sample_files
        self.overwrite = overwrite
        self.digests: dict[str, str] = {}
        self.num_samples: int | None = None
        self._lock: Path | None = None
        self.repairs: dict[str, Any] | None = None  # what rank 0 found and mended on starting (summary.json's resume)

    # --- before any work ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.sample_files is None:
            self.sample_files = sample_files_for(getattr(pl_module, "model", None))
        reward = getattr(pl_module, "reward", None)
        self.sample_files.reward_name = reward.name if reward is not None else "reward"
        datamodule = getattr(trainer, "datamodule", None)
        self.num_samples = getattr(datamodule, "num_samples", None)
        outcome: dict[str, Any] = {"error": None}
        if trainer.is_global_zero:
            try:
                outcome = self._prepare(trainer, pl_module, datamodule)
            except (OSError, ValueError) as err:
                self._release()
                outcome = {"error": str(write_error(self.output_dir, err) if isinstance(err, OSError) else err)}
        outcome = trainer.strategy.broadcast(outcome, src=0)
        if outcome["error"]:
            raise (ValueError if trainer.is_global_zero else ReportedByRankZero)(outcome["error"])
        self.digests = outcome["digests"]
        pl_module.finished = {m: set(v) for m, v in outcome["finished"].items()}

    def _prepare(self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule: Any) -> dict[str, Any]:
        """Rank 0: folder writable and locked, settings compared and recorded, finished samples found."""
        given = getattr(datamodule, "output_dir", None)
        if given is not None and Path(given).resolve() != self.output_dir.resolve():
            raise ValueError(f"data.output_dir {given} differs from the writer's output_dir {self.output_dir}")
        check_writable(self.output_dir, "output_dir")
        self._lock, taken_over = acquire_lock(self.output_dir)
        settings = pl_module.method_settings(str(trainer.precision), getattr(datamodule, "batch_size", None),
                                             trainer.world_size)
        digests = {m: digest(s) for m, s in settings.items()}
        recorded = read_fingerprints(self.output_dir)
        changed = {m: differences(recorded[m]["settings"], settings[m]) for m in settings
                   if m in recorded and recorded[m]["digest"] != digests[m]}
        unrecorded = sorted(m for m in _methods_in_parts(self.output_dir) if m in settings and m not in recorded)
        if (changed or unrecorded) and not self.overwrite:
            groups: dict[str, list[str]] = defaultdict(list)  # methods with the same differences, named once
            for method, difference in [*changed.items(), *((m, "settings not recorded") for m in unrecorded)]:
                groups[difference].append(method)
            what = "; ".join(f"{', '.join(methods)} ({difference})" for difference, methods in groups.items())
            raise ValueError(f"output_dir {self.output_dir} holds results decoded with other settings: {what}; "
                             f"pass --overwrite to discard them and decode again, or choose another --output_dir")
        damaged = drop_damaged_lines(self.output_dir)
        if changed or unrecorded:
            drop_methods(self.output_dir, {*changed, *unrecorded})
        write_fingerprints(self.output_dir, {**recorded, **{m: {"digest": digests[m], "settings": settings[m]}
                                                            for m in settings}})
        finished = finished_samples(self.output_dir, digests)
        self._report_repairs(len(digests), finished, damaged, taken_over)
        return {"error": None, "digests": digests, "finished": {m: sorted(v) for m, v in finished.items()}}

    def _report_repairs(self, methods: int, finished: dict[str, set[int]], damaged: int,
                        taken_over: dict | None) -> None:
        """One line each for what this run found on starting (a gone decode's lock taken over, damaged part
        lines removed, finished samples kept), recorded in ``self.repairs`` for summary.json."""
        limit = self.num_samples
        kept = {m: sum(1 for i in v if limit is None or i < limit) for m, v in finished.items()}
        kept = {m: n for m, n in kept.items() if n}
        self.repairs = {"samples_kept": kept, "damaged_part_lines": damaged, "lock_taken_over": taken_over}
        lines = [takeover_line(self.output_dir, taken_over)] if taken_over else []
        if damaged:
            lines.append(f"removed {damaged} damaged line(s) of {self.output_dir / PARTS} (cut short by a stopped "
                         f"run); their samples are decoded again")
        if kept:
            rest = "" if limit is None else f"; decoding the other {limit * methods - sum(kept.values())}"
            lines.append(f"kept {sum(kept.values())} finished samples of {self.output_dir} "
                         f"({', '.join(f'{m} {n}' for m, n in kept.items())}){rest}")
        for line in lines:
            print(f"resume: {line}", file=sys.stderr)

    # --- as methods finish batches -------------------------------------------------------------------------
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank = trainer.global_rank
        pl_module.record_sink = lambda record: self.write_record(rank, record)

    def write_record(self, rank: int, record: dict[str, list]) -> None:
        """Append one method's results for a batch (:meth:`DecodingModule.predict_step`) to rank ``rank``'s part;
        a failed write (a full disk) is a one-line error naming the folder and its free space."""
        try:
            append_record(self.output_dir, rank, record, self.sample_files, self.digests)
        except OSError as err:
            raise write_error(self.output_dir, err) from None

    # --- at the end --------------------------------------------------------------------------------------
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()
        error = None
        if trainer.is_global_zero:
            try:
                summary = write_outputs(self.output_dir, list(pl_module.metrics), self.set_metrics,
                                        {k: getattr(m, "threshold", None) for k, m in pl_module.metrics.items()},
                                        self.sample_files, self.digests, self.num_samples,
                                        labels=self._labels(pl_module), repairs=self.repairs)
            except OSError as err:
                error = str(write_error(self.output_dir, err))
            else:
                print(format_summary(summary))
                missing = 0 if self.num_samples is None else sum(self.num_samples - summary.get(m, {}).get("n", 0)
                                                                 for m in self.digests)
                if missing:
                    error = (f"output_dir {self.output_dir}: {missing} of {self.num_samples * len(self.digests)} "
                             f"requested (method, index) results are missing from {PARTS}/ (multi-node decoding "
                             f"needs an output folder shared by every node); rerun the same command to decode them")
        error = trainer.strategy.broadcast(error, src=0)
        if error:
            raise (ValueError if trainer.is_global_zero else ReportedByRankZero)(error)

    @staticmethod
    def _labels(pl_module: L.LightningModule) -> dict[str, str]:
        """Axis labels of the reward and the evaluation columns: their names and units."""
        reward = getattr(pl_module, "reward", None)
        labels = {"reward": axis_label(f"reward: {reward.name if reward is not None else 'reward'}", reward)}
        return {**labels, **{k: axis_label(k, m) for k, m in getattr(pl_module, "metrics", {}).items()}}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if hasattr(pl_module, "record_sink"):
            pl_module.record_sink = None
        self._release()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None


# --- the output folder ------------------------------------------------------------------------------------
def read_fingerprints(folder: Path) -> dict[str, dict]:
    """Method -> {"digest", "settings"} recorded by earlier runs into ``folder``."""
    path = folder / FINGERPRINTS
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data.get("methods"), dict):
        raise ValueError(f"{path} is damaged; pass --overwrite to decode every method again, or choose another "
                         f"--output_dir")
    return data["methods"]


def write_fingerprints(folder: Path, methods: dict[str, dict]) -> None:
    atomic_write(folder / FINGERPRINTS, json.dumps({"methods": methods}, indent=1, sort_keys=True) + "\n")


def _records(folder: Path) -> Iterator[tuple[Path, str, dict | None]]:
    """(part file, line, record) of every line of the parts; a line cut short by a kill reads as None."""
    for part in sorted((folder / PARTS).glob("*.jsonl")):
        for line in part.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # that batch is redone
                record = None
            yield part, line, record


def _method_fingerprints(record: dict) -> dict[str, str | None]:
    return {s["method"]: s.get("fingerprint") for s in record["stats"]}


def _methods_in_parts(folder: Path) -> set[str]:
    return {r["method"] for _, _, record in _records(folder) if record for r in record["rows"]}


def finished_samples(folder: Path, digests: dict[str, str]) -> dict[str, set[int]]:
    """Method -> indices already decoded into ``folder`` with the settings ``digests[method]``."""
    done: dict[str, set[int]] = defaultdict(set)
    for _, _, record in _records(folder):
        if record is None:
            continue
        fingerprints = _method_fingerprints(record)
        for row in record["rows"]:
            if row["method"] in digests and fingerprints.get(row["method"]) == digests[row["method"]]:
                done[row["method"]].add(row["index"])
    return dict(done)


def drop_damaged_lines(folder: Path) -> int:
    """Remove the part lines a stopped run cut short (their batches are decoded again), rewriting each damaged
    file atomically; returns how many there were."""
    kept: dict[Path, list[str]] = defaultdict(list)
    damaged: dict[Path, int] = defaultdict(int)
    for part, line, record in _records(folder):
        if record is None:
            damaged[part] += 1
        else:
            kept[part].append(line)
    for part in sorted(damaged):
        atomic_write(part, "".join(line + "\n" for line in kept[part]))
    return sum(damaged.values())


def drop_methods(folder: Path, methods: set[str]) -> None:
    """Remove ``methods``' rows and statistics from the parts (``--overwrite``), rewriting each file atomically."""
    kept: dict[Path, list[str]] = defaultdict(list)
    for part, line, record in _records(folder):
        if record is None:
            continue
        record = {"rows": [r for r in record["rows"] if r["method"] not in methods],
                  "stats": [s for s in record["stats"] if s["method"] not in methods]}
        kept[part].extend([json.dumps(record)] if record["rows"] else [])
    for part in sorted((folder / PARTS).glob("*.jsonl")):
        atomic_write(part, "".join(line + "\n" for line in kept.get(part, [])))


def append_record(folder: Path, rank: int, record: dict[str, list], sample_files: SampleFiles,
                  digests: dict[str, str]) -> None:
    """Append a record of :meth:`DecodingModule.predict_step` (rows and statistics) to ``folder``'s part of
    rank ``rank``: samples in their JSON-able form, each method's statistics with its settings digest."""
    rows = [{**r, "sample": sample_files.encode(r["sample"])} for r in record["rows"]]
    stats = [{**s, "fingerprint": digests.get(s["method"])} for s in record["stats"]]
    _append_line(folder / PARTS / f"rank{rank}.jsonl", json.dumps({"rows": rows, "stats": stats}))


def _append_line(path: Path, line: str) -> None:
    """Append a line, first ending a line that a killed run left cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as handle:
        handle.seek(0, 2)
        if handle.tell():
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write((line + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def _read_parts(folder: Path, digests: dict[str, str] | None, num_samples: int | None) -> tuple[list[dict], list[dict]]:
    """Rows (one per (method, index), sorted) and the statistics of the batches they came from: only
    this run's methods and settings (``digests``; all with None) and indices below ``num_samples``."""
    rows: dict[tuple[str, int], dict] = {}
    stats: list[dict] = []
    for _, _, record in _records(folder):
        if record is None:
            continue
        fingerprints = _method_fingerprints(record)
        fresh: set[str] = set()
        for row in record["rows"]:
            method, index = row["method"], row["index"]
            if digests is not None and (method not in digests or fingerprints.get(method) != digests[method]):
                continue
            if (num_samples is not None and index >= num_samples) or (method, index) in rows:
                continue
            rows[(method, index)] = row
            fresh.add(method)
        stats.extend(s for s in record["stats"] if s["method"] in fresh)
    return sorted(rows.values(), key=lambda r: (r["method"], r["index"])), stats


def axis_label(name: str, scorer: GuardedReward | SampleMetric | None) -> str:
    """``name`` with the unit its scorer declares (a reward's or a metric's ``unit``)."""
    unit = scorer.unit if scorer is not None else None
    return f"{name} ({unit})" if unit else name


def write_outputs(output_dir: Path, metric_names: list[str], set_metrics: dict[str, Callable[[list], float]],
                  thresholds: dict[str, float | None], sample_files: SampleFiles | None = None,
                  digests: dict[str, str] | None = None, num_samples: int | None = None,
                  labels: dict[str, str] | None = None, repairs: dict[str, Any] | None = None) -> dict:
    """Merge the parts under ``output_dir`` into sample files, CSV, JSON summary and histogram.

    With ``digests`` (method -> settings fingerprint) only those methods' rows decoded with those
    settings are merged, and with ``num_samples`` only indices below it. ``distinct_fraction``
    compares the samples' stored forms (``sample_files.encode``), not their reprs. ``labels`` name
    the reward and evaluation columns (with units) on the histogram. ``repairs`` (what the run found on
    starting: :meth:`DesignWriter._report_repairs`) goes into each method's ``resume`` entry.
    """
    output_dir = Path(output_dir)
    sample_files = sample_files or FastaFiles()
    rows, stats = _read_parts(output_dir, digests, num_samples)
    order = {m: k for k, m in enumerate(digests or {})}  # the config's order of methods, when known
    rows.sort(key=lambda r: (order.get(r["method"], len(order)), r["method"], r["index"]))
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
        if num_samples is not None:
            entry["requested"] = num_samples
        for name in metric_names:
            values = torch.tensor([float("nan") if r.get(name) is None else r[name] for r in method_rows])
            entry[name] = quantile_summary(values)
            entry[name]["failures"] = int((~torch.isfinite(values)).sum())  # samples it could not score
            if thresholds.get(name) is not None:
                entry[name][f"fraction_above_{thresholds[name]:g}"] = float((values > thresholds[name]).double().mean())
        for name, fn in set_metrics.items():
            entry[name] = fn(samples)
        entry["distinct_fraction"] = distinct_fraction(stored[method])
        method_stats = [s for s in stats if s["method"] == method]
        n_stat = sum(s["n"] for s in method_stats)
        entry["per_sample"] = {f: sum(s[f] for s in method_stats) / max(n_stat, 1) for f in COMPUTE_FIELDS}
        entry["reward_failures"] = sum(s["reward_failures"] for s in method_stats)  # floored evaluations
        entry["reward_failure_causes"] = {}  # the floored evaluations by cause (raised, timeout, nan)
        for s in method_stats:
            for cause, n in s.get("reward_failure_causes", {}).items():
                entry["reward_failure_causes"][cause] = entry["reward_failure_causes"].get(cause, 0) + n
        entry["wall_seconds"] = sum(s["seconds"] for s in method_stats)
        entry["samples_per_second"] = n_stat / entry["wall_seconds"] if entry["wall_seconds"] else float("nan")
        if repairs is not None:
            entry["resume"] = {"samples_kept": repairs["samples_kept"].get(method, 0),
                               "damaged_part_lines": repairs["damaged_part_lines"],
                               "lock_taken_over": repairs["lock_taken_over"]}
        summary[method] = entry
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if by_method:
        _histogram(output_dir / "reward_histogram.png", by_method, ["reward", *metric_names[:1]], labels or {})
    return summary


def _histogram(path: Path, by_method: dict[str, list[dict]], columns: list[str], labels: dict[str, str]) -> None:
    """Small multiples: one row per method, one column per score, shared bins; each panel marks its
    median and names its count, so that no distribution hides another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(by_method)
    fig, axes = plt.subplots(len(methods), len(columns), figsize=(5.0 * len(columns), 1.0 + 1.25 * len(methods)),
                             squeeze=False, sharex="col")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, column in enumerate(columns):
        values = {m: torch.tensor([r[column] for r in rows if r.get(column) is not None], dtype=torch.float64)
                  for m, rows in by_method.items()}
        values = {m: v[torch.isfinite(v)] for m, v in values.items()}
        pooled = torch.cat(list(values.values()))
        edges = torch.linspace(float(pooled.min()), float(pooled.max()) + 1e-9, 31).tolist() if pooled.numel() else 30
        for r, method in enumerate(methods):
            ax, v, color = axes[r][c], values[method], colors[r % len(colors)]
            ax.hist(pooled.tolist(), bins=edges, histtype="step", color="0.75", linewidth=0.8)  # all methods
            ax.hist(v.tolist(), bins=edges, color=color, alpha=0.8)
            if v.numel():
                median = float(v.quantile(0.5))
                ax.axvline(median, color="black", linewidth=1, linestyle="--")
                note = f"{method}: median {median:.3g}, n={v.numel()}"
            else:
                note = f"{method}: no finite values"
            ax.text(0.01, 0.95, note, transform=ax.transAxes, fontsize=8, va="top")
            ax.set_ylabel("samples", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[-1][c].set_xlabel(labels.get(column, column))
    names = " and ".join(labels.get(c, c).split(" (")[0] for c in columns)
    fig.suptitle(f"{names}, by method (grey outline: all methods pooled; dashed: median)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_summary(summary: dict) -> str:
    """A plain-text table of the headline figures per method, then a warning for each method whose
    reward evaluations all failed (every sample floored: a reward that matches none of its samples)."""
    lines = [f"{'method':<14}{'n':>6}{'reward med':>12}{'top10%':>9}{'NFE/sample':>12}{'reward calls':>14}{'seconds':>9}"]
    for method, e in summary.items():
        lines.append(f"{method:<14}{e['n']:>6}{e['reward']['median']:>12.3f}{e['reward']['top10']:>9.3f}"
                     f"{e['per_sample']['denoiser_calls']:>12.1f}{e['per_sample']['reward_calls']:>14.1f}"
                     f"{e['wall_seconds']:>9.1f}")
    for method, e in summary.items():
        calls = e["per_sample"]["reward_calls"] * e["n"]
        if calls and e["reward_failures"] >= calls - 1e-6:
            lines.append(f"warning: the reward scored none of {method}'s {e['n']} samples (all floored): check that "
                         f"it reads this model's samples")
    return "\n".join(lines)
