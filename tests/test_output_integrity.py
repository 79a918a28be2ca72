"""Nothing stale, nothing lost (issue 13): resume per (method, index) and per settings fingerprint,
refused changes, --overwrite, locks, completeness of the merge, NaN floors, rewards that match nothing,
failed evaluation rows. Decodes run in this process on tiny random checkpoints."""
from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml

from svdd_lightning import BestOfN, PretrainedSampling, checkpoints
from svdd_lightning.core.reward import GuardedReward
from svdd_lightning.evaluation import ScoreMetric
from svdd_lightning.lightning.cli import main_decode
from svdd_lightning.lightning.decoding import DecodingModule, RewardFailure
from svdd_lightning.lightning.fingerprint import describe, differences
from svdd_lightning.lightning.folders import LOCK, acquire_lock, release_lock
from svdd_lightning.lightning.writer import DesignWriter, format_summary, write_outputs
from svdd_lightning.domains.sequences.oracle import OracleReward
from svdd_lightning.sample_files import FastaFiles, JsonlFiles, sample_files_for

from tiny_dna import LENGTH, build_tiny_checkpoints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_checkpoints(tmp_path_factory.mktemp("integrity_ckpt"))


def write_config(tiny: dict[str, Path], path: Path, **model_changes) -> Path:
    """A small decode config: pretrained sampling and Best-of-2 on the tiny DNA model."""
    config = {
        "seed_everything": 0, "return_predictions": False,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"model": str(tiny["mdlm"]), "reward_floor": -10.0,
                  "reward": {"class_path": "svdd_lightning.domains.sequences.oracle.OracleReward",
                             "init_args": {"checkpoint": str(tiny["reward"])}},
                  "methods": {"pretrained": {"class_path": "svdd_lightning.PretrainedSampling"},
                              "best_of_n": {"class_path": "svdd_lightning.BestOfN", "init_args": {"n": 2}}},
                  **model_changes},
        "data": {"num_samples": 4, "batch_size": 2},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def decode(config: Path, out: Path, *extra: str) -> str | None:
    """``decode.py predict`` in this process: None on success, else the one-line error it exits with."""
    try:
        main_decode(["predict", "--config", str(config), "--output_dir", str(out), *extra])
    except SystemExit as exit_:
        assert isinstance(exit_.code, str) and "\n" not in exit_.code, exit_.code
        return exit_.code
    return None


def rows(out: Path) -> dict[tuple[str, int], str]:
    with open(out / "samples.csv") as handle:
        return {(r["method"], int(r["index"])): r["sequence"] for r in csv.DictReader(handle)}


def part_rows(out: Path) -> list[tuple[str, int]]:
    return [(r["method"], r["index"]) for part in sorted((out / "parts").glob("*.jsonl"))
            for line in part.read_text().splitlines() for r in json.loads(line)["rows"]]


# --- rerunning into a folder ---------------------------------------------------------------------------------
def test_rerun_resumes_refuses_changed_settings_and_decodes_added_methods(tiny, tmp_path):
    config, out = write_config(tiny, tmp_path / "c.yaml"), tmp_path / "out"
    # model_args on the command line arrive as strings (issue 13.8)
    assert decode(config, out, "--model.model_args.num_steps", "6") is None
    first, saved_config = rows(out), (out / "config.yaml").read_text()
    assert len(first) == 8 and (out / "pretrained.fasta").is_file()  # the masked model's files: FASTA
    assert yaml.safe_load(saved_config)["model"]["model_args"] == {"num_steps": "6"}

    # another seed: refused in one line naming it, before any work; config.yaml still describes the run
    error = decode(config, out, "--model.model_args.num_steps", "6", "--model.seed", "1")
    assert error.startswith(f"error: output_dir {out} holds results decoded with other settings: "
                            f"pretrained, best_of_n (seed: 0 -> 1); pass --overwrite"), error
    assert (out / "config.yaml").read_text() == saved_config and len(part_rows(out)) == 8
    # another checkpoint setting and another Best-of-N: named too
    error = decode(config, out, "--model.methods.best_of_n.init_args.n", "3")
    assert "model.init_args.num_steps: 6 -> 8" in error and "method.n: 2 -> 3" in error

    # an added method is decoded, the others resume (nothing re-decoded)
    added = write_config(tiny, tmp_path / "added.yaml", model_args={"num_steps": 6})
    data = yaml.safe_load(added.read_text())
    data["model"]["methods"]["svdd_pm"] = {"class_path": "svdd_lightning.SVDD", "init_args": {
        "num_candidates": 2, "value": {"class_path": "svdd_lightning.PosteriorMeanValue"}}}
    added.write_text(yaml.safe_dump(data, sort_keys=False))
    assert decode(added, out) is None
    assert sorted(part_rows(out)) == sorted([*first, *((("svdd_pm", i)) for i in range(4))])
    second = rows(out)
    assert {k: v for k, v in second.items() if k[0] != "svdd_pm"} == first
    assert list(json.loads((out / "summary.json").read_text())) == ["pretrained", "best_of_n", "svdd_pm"]  # config order

    # fewer samples: only the requested indices are reported
    assert decode(added, out, "--data.num_samples", "2") is None
    assert sorted(rows(out)) == sorted((m, i) for m in ("pretrained", "best_of_n", "svdd_pm") for i in range(2))
    assert all(e["n"] == 2 and e["requested"] == 2 for e in json.loads((out / "summary.json").read_text()).values())

    # --overwrite discards the changed method's results and decodes it again
    assert decode(added, out, "--model.methods.best_of_n.init_args.n", "3", "--overwrite") is None
    third = rows(out)
    assert {k: v for k, v in third.items() if k[0] != "best_of_n"} == {k: v for k, v in second.items()
                                                                       if k[0] != "best_of_n" and k[1] < 4}
    assert sorted(k for k in part_rows(out) if k[0] == "best_of_n") == [("best_of_n", i) for i in range(4)]
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["methods"]["best_of_n"]["init_args"]["n"] == 3


class SigtermAfterFirstBatch(L.Callback):
    """Sends this process SIGTERM once the first batch is written, as ``kill`` or a scheduler would."""

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_the_run_in_one_line_and_the_rerun_resumes(tiny, tmp_path):
    """Lightning's predict loop only records SIGTERM: the run itself must stop, keep what it wrote, unlock."""
    config = write_config(tiny, tmp_path / "c.yaml")
    assert decode(config, tmp_path / "full") is None
    out = tmp_path / "out"
    error = decode(config, out, "--trainer.callbacks+=test_output_integrity.SigtermAfterFirstBatch")
    assert error is not None and error.startswith("error: stopped by SIGTERM"), error
    assert sorted(part_rows(out)) == [(m, i) for m in ("best_of_n", "pretrained") for i in (0, 1)]
    assert not (out / LOCK).exists() and not (out / "samples.csv").exists()
    assert decode(config, out) is None
    assert rows(out) == rows(tmp_path / "full")


class SigtermAfterFirstMethod(L.Callback):
    """Sends this process SIGTERM once the first method has written its share of the first batch."""

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        write = pl_module.record_sink
        if batch_idx == 0 and write is not None:
            def write_then_stop(record: dict) -> None:
                write(record)
                os.kill(os.getpid(), signal.SIGTERM)
            pl_module.record_sink = write_then_stop


def test_sigterm_during_a_batch_keeps_the_methods_that_finished_it(tiny, tmp_path):
    config = write_config(tiny, tmp_path / "c.yaml")
    assert decode(config, tmp_path / "full") is None
    out = tmp_path / "out"
    error = decode(config, out, "--trainer.callbacks+=test_output_integrity.SigtermAfterFirstMethod")
    assert error is not None and error.startswith("error: stopped by SIGTERM"), error
    first = next(iter(yaml.safe_load(config.read_text())["model"]["methods"]))
    assert sorted(part_rows(out)) == [(first, 0), (first, 1)]
    assert decode(config, out) is None
    assert rows(out) == rows(tmp_path / "full")
    assert sorted(k for k in part_rows(out) if k[0] == first) == [(first, i) for i in range(4)]  # none decoded twice


def test_results_without_recorded_settings_are_refused(tiny, tmp_path):
    config, out = write_config(tiny, tmp_path / "c.yaml"), tmp_path / "out"
    (out / "parts").mkdir(parents=True)
    (out / "parts" / "rank0.jsonl").write_text(json.dumps({"rows": [
        {"method": "pretrained", "index": 0, "sample": "A" * LENGTH, "reward": 0.0}], "stats": []}) + "\n")
    assert "pretrained (settings not recorded)" in decode(config, out)


def test_fingerprint_tells_weights_apart_and_ignores_worker_counts(tiny, tmp_path):
    model = checkpoints.load(tiny["mdlm"])
    retrained = checkpoints.load(tiny["mdlm"])
    with torch.no_grad():
        next(retrained.parameters()).add_(1e-3)
    assert describe(model) != describe(retrained)
    assert "model.weights" in differences({"model": describe(model)}, {"model": describe(retrained)})
    assert describe(BestOfN(2, chunk_size=4)) == describe(BestOfN(2, chunk_size=8)) != describe(BestOfN(3))
    assert describe(OracleReward(str(tiny["reward"]), batch_size=4)) == describe(OracleReward(str(tiny["reward"])))


# --- the lock ------------------------------------------------------------------------------------------------
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "since": "then"}))
        error = decode(write_config(tiny, tmp_path / "c.yaml"), out)
        assert error.startswith(f"error: output_dir {out} is in use by another decode (host {socket.gethostname()}, "
                                f"pid {sleeper.pid}, since then)"), error
        assert not (out / "parts").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # that process is gone: its lock is taken over, and released at the end
    assert decode(write_config(tiny, tmp_path / "c.yaml"), out) is None
    assert not (out / LOCK).exists() and len(rows(out)) == 8


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"host": "node-17", "pid": 1, "since": "then"}))
    with pytest.raises(ValueError, match=r"in use by another decode \(host node-17, pid 1.*delete .*\.decode\.lock"):
        acquire_lock(tmp_path)
    (tmp_path / LOCK).unlink()
    path, taken_over = acquire_lock(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid() and taken_over is None
    # a lock naming this very process is stale (a restarted container keeps its host name and reuses pids)
    assert acquire_lock(tmp_path)[0] == path
    release_lock(path)
    assert not path.exists()


def test_a_dead_owners_lock_is_taken_over_at_once_with_a_line(tiny, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "then"}))
    os.utime(out / LOCK, (0, os.path.getmtime(out / LOCK) - 125))  # written 2 minutes ago
    assert decode(write_config(tiny, tmp_path / "c.yaml"), out) is None
    err = capfd.readouterr().err
    assert (f"resume: took over the lock of output_dir {out} left by a decode that is gone (host "
            f"{socket.gethostname()}, pid {dead.pid}, age 0h02m0") in err, err
    resume = json.loads((out / "summary.json").read_text())["pretrained"]["resume"]
    assert resume["lock_taken_over"]["pid"] == dead.pid and resume["lock_taken_over"]["age_seconds"] >= 125
    # an unreadable lock (locks are written whole, so it is damaged) is taken over at once too
    (out / LOCK).write_text("")
    assert acquire_lock(out)[1]["host"] is None
    release_lock(out / LOCK)


def test_a_lock_whose_write_fails_is_not_left_and_the_error_names_the_folder(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    error = decode(write_config(tiny, tmp_path / "c.yaml"), out)
    assert re.fullmatch(rf"error: cannot write to {re.escape(str(out))} \(No space left on device; [\d.]+ \w?i?B "
                        rf"free\): free space and rerun, finished batches are kept \(SVDD_DEBUG=1 .*\)", error), error
    assert sorted(p.name for p in out.iterdir()) == []  # no lock, no temporary file
    monkeypatch.undo()
    assert decode(write_config(tiny, tmp_path / "c.yaml"), out) is None  # nothing blocks the rerun


def test_a_full_disk_mid_run_is_one_line_and_the_rerun_resumes(tiny, tmp_path, monkeypatch):
    from svdd_lightning.lightning import writer

    config = write_config(tiny, tmp_path / "c.yaml")
    assert decode(config, tmp_path / "full") is None
    out, append, calls = tmp_path / "out", writer._append_line, []

    def fill_after_one(path: Path, line: str) -> None:
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(path, line)

    monkeypatch.setattr(writer, "_append_line", fill_after_one)
    error = decode(config, out)
    assert error.startswith(f"error: cannot write to {out} (No space left on device; ") and \
        "free): free space and rerun, finished batches are kept" in error, error
    assert not (out / LOCK).exists() and len(part_rows(out)) == 2
    monkeypatch.undo()
    assert decode(config, out) is None
    assert rows(out) == rows(tmp_path / "full")


def test_a_resume_reports_the_damaged_line_and_the_kept_samples(tiny, tmp_path, capfd):
    config, out = write_config(tiny, tmp_path / "c.yaml"), tmp_path / "out"
    assert decode(config, out) is None
    full = rows(out)
    part = out / "parts" / "rank0.jsonl"
    lines = part.read_text().splitlines()
    part.write_text("".join(line + "\n" for line in lines[:-1]) + lines[-1][:40])  # a kill mid-write
    capfd.readouterr()
    assert decode(config, out) is None
    err = capfd.readouterr().err
    assert f"resume: removed 1 damaged line(s) of {out / 'parts'} (cut short by a stopped run); their samples are " \
           f"decoded again" in err, err
    assert f"resume: kept 6 finished samples of {out} (pretrained 4, best_of_n 2); decoding the other 2" in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_of_n"]["resume"] == {"samples_kept": 2, "damaged_part_lines": 1, "lock_taken_over": None}
    assert rows(out) == full
    # the damaged line is gone: the next run reports nothing to repair
    assert decode(config, out) is None
    assert "damaged" not in capfd.readouterr().err
    assert json.loads((out / "summary.json").read_text())["best_of_n"]["resume"]["damaged_part_lines"] == 0


# --- the merge ----------------------------------------------------------------------------------------------
class _Strategy:
    def barrier(self, *args) -> None:
        pass

    def broadcast(self, obj, src: int = 0):
        return obj


def test_merge_fails_with_a_count_when_requested_samples_are_missing(tmp_path):
    """Two nodes without a shared folder: rank 0's folder holds only its own share."""
    writer = DesignWriter(str(tmp_path), sample_files=FastaFiles())
    writer.digests, writer.num_samples = {"pretrained": "d1", "svdd_pm": "d2"}, 4
    for method in writer.digests:
        prediction = {"rows": [{"method": method, "index": i, "sample": "ACGT", "reward": 1.0} for i in (0, 2)],
                      "stats": [{"method": method, "n": 2, "seconds": 1.0, "denoiser_calls": 8, "gradient_calls": 0,
                                 "reward_calls": 2, "reward_failures": 0, "value_calls": 0}]}
        writer.write_record(0, prediction)
    trainer = SimpleNamespace(is_global_zero=True, strategy=_Strategy())
    with pytest.raises(ValueError, match=r"4 of 8 requested \(method, index\) results are missing from parts/ "
                                         r"\(multi-node decoding needs an output folder shared by every node\)"):
        writer.on_predict_end(trainer, SimpleNamespace(metrics={}, reward=None))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["svdd_pm"]["n"] == 2 and summary["svdd_pm"]["requested"] == 4


def test_merge_counts_failed_evaluation_rows_and_keeps_one_run_per_sample(tmp_path):
    stats = {"method": "m", "n": 2, "seconds": 2.0, "denoiser_calls": 8, "gradient_calls": 0, "reward_calls": 2,
             "reward_failures": 1, "value_calls": 0, "fingerprint": "d"}
    batch = {"rows": [{"method": "m", "index": i, "sample": "AC", "reward": 1.0, "oracle": v}
                      for i, v in ((0, None), (1, 0.5))], "stats": [stats]}
    (tmp_path / "parts").mkdir()
    # the same batch twice (a second run into the folder) and a batch decoded with other settings
    other = {**batch, "stats": [{**stats, "fingerprint": "old"}]}
    (tmp_path / "parts" / "rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (other, batch, batch)))
    summary = write_outputs(tmp_path, ["oracle"], {}, {"oracle": None}, FastaFiles(), {"m": "d"}, 2)
    entry = summary["m"]
    assert entry["n"] == 2 and entry["oracle"]["failures"] == 1 and entry["oracle"]["median"] == 0.5
    assert entry["wall_seconds"] == 2.0 and entry["reward_failures"] == 1  # one batch's statistics, not three
    assert "warning" not in format_summary(summary)
    entry["reward_failures"] = 2  # every evaluation floored: said below the table
    assert format_summary(summary).splitlines()[-1].startswith("warning: the reward scored none of m's 2 samples")


# --- rewards ----------------------------------------------------------------------------------------------
def test_nan_reward_floor_is_refused_for_decoding(tiny, tmp_path):
    config = write_config(tiny, tmp_path / "c.yaml", reward_floor=float("nan"))
    assert ".nan" in config.read_text()  # as a user writes it in YAML
    assert decode(config, tmp_path / "out").startswith("error: model.reward_floor must be a finite number for decoding")
    model = checkpoints.load(tiny["mdlm"])
    with pytest.raises(ValueError, match="decoding needs a finite floor"):
        BestOfN(2).sample(model, GuardedReward(lambda s: [0.0] * len(s), floor=float("nan")), [torch.Generator()])


def test_a_reward_alphabet_that_cannot_read_the_model_is_refused_up_front(tiny):
    bad = OracleReward(str(tiny["reward"]), alphabet="ACGX")
    with pytest.raises(ValueError, match=r"model.reward: OracleReward.alphabet 'ACGX' cannot read the model's "
                                         r"symbols \['T'\]"):
        DecodingModule(str(tiny["mdlm"]), bad, {"pretrained": PretrainedSampling()})
    with pytest.raises(ValueError, match="model.metrics.oracle: OracleReward.alphabet"):
        DecodingModule(str(tiny["mdlm"]), OracleReward(str(tiny["reward"])), {"pretrained": PretrainedSampling()},
                       metrics={"oracle": ScoreMetric(bad)})
    # T and U read alike: an RNA oracle scores DNA designs
    DecodingModule(str(tiny["mdlm"]), OracleReward(str(tiny["reward"]), alphabet="ACGU"),
                   {"pretrained": PretrainedSampling()})


def _batch(indices: list[int]) -> dict[str, torch.Tensor]:
    return {"index": torch.tensor(indices), "spare": torch.zeros(len(indices), dtype=torch.bool)}


def test_a_reward_that_raises_on_every_sample_stops_the_run(tiny, inference_mode):
    def broken(samples):
        raise KeyError("no such receptor")

    module = DecodingModule(str(tiny["mdlm"]), broken, {"best_of_n": BestOfN(2)}, model_args={"num_steps": 4})
    with pytest.raises(RewardFailure, match=r"reward broken scored none of 6 evaluations in a batch of best_of_n "
                                            r"\(6 raised; last error: KeyError: 'no such receptor'\)"):
        module.predict_step(_batch([0, 1]), 0)

    def sometimes(samples):  # fails on some samples only: counted, the run goes on
        return [None if s.startswith("A") else 1.0 for s in samples]

    module = DecodingModule(str(tiny["mdlm"]), sometimes, {"best_of_n": BestOfN(2)}, model_args={"num_steps": 4})
    out = module.predict_step(_batch(list(range(8))), 0)
    assert len(out["rows"]) == 8 and out["stats"][0]["reward_failures"] > 0


def test_only_unfinished_methods_and_indices_are_decoded(tiny, inference_mode):
    module = DecodingModule(str(tiny["mdlm"]), lambda s: [0.0] * len(s),
                            {"pretrained": PretrainedSampling(), "best_of_n": BestOfN(2)}, model_args={"num_steps": 4})
    module.finished = {"pretrained": {0, 1}, "best_of_n": {1}}
    out = module.predict_step(_batch([0, 1]), 0)
    assert [(r["method"], r["index"]) for r in out["rows"]] == [("best_of_n", 0)]
    assert [(s["method"], s["n"]) for s in out["stats"]] == [("best_of_n", 1)]


# --- sample files -------------------------------------------------------------------------------------------
def test_sample_files_come_from_the_model_else_json_lines(tiny, tmp_path):
    from svdd_lightning.domains.images.diffusers_model import DiffusersChain
    from svdd_lightning.domains.images.outputs import ImageFiles
    from svdd_lightning.domains.molecules.graph_diffusion import GraphDiffusion
    from svdd_lightning.domains.molecules.outputs import MoleculeFiles

    assert isinstance(sample_files_for(checkpoints.load(tiny["mdlm"])), FastaFiles)
    assert isinstance(GraphDiffusion.sample_files(None), MoleculeFiles)  # the hook uses nothing of the model
    assert isinstance(DiffusersChain.sample_files(None), ImageFiles)
    files = sample_files_for(object())
    assert isinstance(files, JsonlFiles)
    points = [torch.tensor([0.5, -1.25]), torch.tensor([2.0, 3.0])]
    stored = [json.loads(json.dumps(files.encode(p))) for p in points]
    assert all(torch.equal(files.decode(s), p) for s, p in zip(stored, points))
    files.write(tmp_path, "smc", [{"index": i, "sample": p, "reward": 1.0} for i, p in enumerate(points)])
    lines = [json.loads(line) for line in (tmp_path / "smc.jsonl").read_text().splitlines()]
    assert lines[0] == {"index": 0, "reward": 1.0, "sample": {"tensor": [0.5, -1.25], "dtype": "float32"}}
    assert files.csv_value("smc", {"sample": points[0]}) == "[0.5, -1.25]"


# --- plots that explain themselves -------------------------------------------------------------------------------
def test_plots_name_the_reward_with_its_unit_and_the_method(tmp_path):
    from PIL import Image

    from svdd_lightning.core.reward import ProxyGuided
    from svdd_lightning.domains.molecules.outputs import MoleculeFiles
    from svdd_lightning.domains.molecules.rewards import QED

    module = SimpleNamespace(reward=GuardedReward(ProxyGuided(QED(), torch.nn.Linear(1, 1))),
                             metrics={"qed": ScoreMetric(QED()), "oracle": ScoreMetric(lambda s: [0.0] * len(s))})
    assert DesignWriter._labels(module) == {"reward": "reward: qed (QED, 0-1)", "qed": "qed (QED, 0-1)",
                                            "oracle": "oracle"}
    files = MoleculeFiles(grid_size=4, per_row=2)
    files.reward_name = "qed"
    rows = [{"index": i, "sample": s, "reward": 0.1 * i} for i, s in enumerate(["CCO", "CCN", "C1CC1", ""])]
    files.write(tmp_path, "svdd_pm", rows)
    with Image.open(tmp_path / "svdd_pm_best.png") as grid:
        assert grid.size == (2 * 220, 2 * 180 + 30)  # RDKit's grid under a 30-pixel title band
    summary = write_outputs(tmp_path, [], {}, {}, FastaFiles(), None, None, {"reward": "reward: qed (QED, 0-1)"})
    assert summary == {} and not (tmp_path / "reward_histogram.png").exists()  # nothing to plot, no error
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "rank0.jsonl").write_text(json.dumps({"rows": [
        {"method": m, "index": 0, "sample": "AC", "reward": 0.5} for m in ("a", "b")], "stats": []}) + "\n")
    write_outputs(tmp_path, [], {}, {}, FastaFiles(), None, None, {"reward": "reward: qed (QED, 0-1)"})
    with Image.open(tmp_path / "reward_histogram.png") as histogram:
        assert histogram.size[1] > 250  # one panel per method


# --- progress ---------------------------------------------------------------------------------------------
def test_progress_per_method_and_step_in_a_log(tiny, tmp_path, capfd):
    config = write_config(tiny, tmp_path / "c.yaml", model_args={"num_steps": 4})
    assert decode(config, tmp_path / "out", "--trainer.enable_progress_bar", "true", "--progress.interval", "1e-9",
                  "--progress.bar", "false") is None
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("decode:")]
    assert lines[0] == "decode: 8 samples to decode (pretrained 4, best_of_n 4)"
    steps = [line for line in lines if "step" in line]
    assert any("| pretrained batch 1/2 step 1/4 |" in line for line in steps)
    assert any("| best_of_n batch 2/2 step 3/4 |" in line for line in steps)
    assert all(" samples/s | ETA " in line for line in lines[1:-1])
    done = [float(line.split()[1].split("/")[0]) for line in lines[1:-1]]
    assert done == sorted(done) and lines[-1].startswith("decode: 8/8 samples in ")
    # silent when Lightning's progress bar is off (as in the other tests)
    assert decode(config, tmp_path / "out2") is None
    assert not [line for line in capfd.readouterr().err.splitlines() if line.startswith("decode:")]
