"""A reward that hangs, never scores or fails too often, and SIGTERM while it runs: bounded calls, a failure
budget with causes in summary.json, and a stop within seconds that resumes to the same samples."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from svdd_lightning.core.deadline import CallInterrupted, CallTimedOut, TimedCalls
from svdd_lightning.core.reward import GuardedReward

from test_output_integrity import decode, part_rows, rows, write_config
from tiny_dna import ROOT, build_tiny_checkpoints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_checkpoints(tmp_path_factory.mktemp("faults_ckpt"))


def config_with(tiny, path: Path, reward: str, **init_args) -> Path:
    return write_config(tiny, path, reward={"class_path": f"faulty_rewards.{reward}", "init_args": init_args},
                        model_args={"num_steps": 4})


# --- the timed call --------------------------------------------------------------------------------------
def test_a_call_past_its_limit_is_abandoned_and_the_next_one_runs_in_a_fresh_worker():
    release, calls = threading.Event(), TimedCalls()
    start = time.monotonic()
    with pytest.raises(CallTimedOut, match="no result after 0.2 s"):
        calls.call(release.wait, timeout=0.2)
    assert 0.2 <= time.monotonic() - start < 1.0
    assert calls.call(lambda x: x + 1, 1, timeout=1.0) == 2  # the stuck worker does not block it
    with pytest.raises(KeyError, match="raised in the worker"):  # exceptions reach the caller as they are
        calls.call(lambda: {}["raised in the worker"], timeout=1.0)
    release.set()


def test_a_stop_request_ends_the_wait_within_a_poll_and_modes_carry_into_the_worker():
    stop, calls, release = threading.Event(), TimedCalls(), threading.Event()
    threading.Timer(0.3, stop.set).start()
    start = time.monotonic()
    with pytest.raises(CallInterrupted):
        calls.call(release.wait, timeout=None, should_stop=stop.is_set)
    assert time.monotonic() - start < 1.0
    release.set()
    with torch.inference_mode():
        assert calls.call(torch.is_inference_mode_enabled, timeout=1.0)
    with torch.no_grad():
        assert not calls.call(torch.is_grad_enabled, timeout=1.0)


def test_a_sample_that_hangs_gets_the_floor_and_is_counted_as_a_timeout(tmp_path):
    from faulty_rewards import HangsOnFirstSample

    flag = tmp_path / "hang"
    flag.touch()
    reward = GuardedReward(HangsOnFirstSample(str(flag)), floor=-1.0, timeout=0.2)
    start = time.monotonic()
    scores = reward.evaluate(["AAG", "GGG", "CCC"])  # the batch times out, then each sample is tried alone
    assert scores.values.tolist() == [-1.0, 3.0, 0.0] and time.monotonic() - start < 2.0
    assert scores.causes == {"timeout": 1} and scores.failures == 1 and scores.errors == 0
    assert scores.last_error == "timed out after 0.2 s (model.reward_timeout)"
    flag.unlink()


# --- decoding runs ---------------------------------------------------------------------------------------
def test_a_reward_that_scores_nothing_stops_the_run_in_one_line(tiny, tmp_path):
    error = decode(config_with(tiny, tmp_path / "c.yaml", "AlwaysNaN"), tmp_path / "out")
    assert error is not None and error.startswith(
        "error: reward always_nan scored none of 2 evaluations in a batch of pretrained (2 nan; "), error
    assert not (tmp_path / "out" / "samples.csv").exists()


def test_a_hanging_sample_is_floored_and_the_run_finishes_with_its_cause_in_the_summary(tiny, tmp_path):
    flag = tmp_path / "hang"
    flag.touch()
    config = config_with(tiny, tmp_path / "c.yaml", "HangsOnFirstSample", flag=str(flag))
    assert decode(config, tmp_path / "out", "--model.reward_timeout", "0.3") is None
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pretrained"]["reward_failure_causes"] == {"timeout": 1}
    assert summary["pretrained"]["reward_failures"] == 1
    flag.unlink()


def test_the_failure_budget_stops_a_run_whose_reward_fails_too_often(tiny, tmp_path):
    config = config_with(tiny, tmp_path / "c.yaml", "AlwaysNaN")
    error = decode(config, tmp_path / "out", "--model.max_failure_fraction", "0.5")
    assert "scored none of 2 evaluations" in error
    error = decode(write_config(tiny, tmp_path / "bad.yaml"), tmp_path / "bad", "--model.max_failure_fraction", "2")
    assert error.startswith("error: model.max_failure_fraction must be between 0 and 1 (1: stop only when every "
                            "evaluation of a batch failed; null: never), got 2.0"), error
    error = decode(write_config(tiny, tmp_path / "bad.yaml"), tmp_path / "bad", "--model.reward_timeout", "0")
    assert error.startswith("error: model.reward_timeout must be a positive number of seconds (or null: no "
                            "limit), got 0.0"), error


def test_a_fraction_under_the_budget_goes_on_and_one_over_it_stops(tiny, inference_mode):
    from svdd_lightning import BestOfN
    from svdd_lightning.lightning.decoding import DecodingModule, RewardFailure

    def half(samples):  # the G count, or None for samples starting with A or C
        return [None if s[0] in "AC" else float(s.count("G")) for s in samples]

    batch = {"index": torch.arange(8), "spare": torch.zeros(8, dtype=torch.bool)}
    module = DecodingModule(str(tiny["mdlm"]), half, {"best_of_n": BestOfN(2)}, model_args={"num_steps": 4},
                            max_failure_fraction=0.9)
    stats = module.predict_step(batch, 0)["stats"][0]
    failed, calls = stats["reward_failure_causes"]["nan"], stats["reward_calls"]
    assert 0 < failed < calls and stats["reward_failures"] == failed
    module = DecodingModule(str(tiny["mdlm"]), half, {"best_of_n": BestOfN(2)}, model_args={"num_steps": 4},
                            max_failure_fraction=failed / calls - 0.01)
    with pytest.raises(RewardFailure, match=rf"could not score {failed} of {calls} evaluations \(more than "
                                            rf"model.max_failure_fraction="):
        module.predict_step(batch, 0)


def test_sigterm_while_the_reward_hangs_stops_within_seconds_and_the_rerun_resumes(tiny, tmp_path):
    flag = tmp_path / "hang"
    config = config_with(tiny, tmp_path / "c.yaml", "HangsAfterCalls", flag=str(flag), calls=3, sigterm=True)
    assert decode(config, tmp_path / "full") is None  # no flag: never hangs
    flag.touch()
    start = time.monotonic()
    error = decode(config, tmp_path / "out")
    blocked = float(next(tmp_path.glob("hang.*.blocked")).read_text())
    assert error is not None and error.startswith("error: stopped by SIGTERM"), error
    assert time.time() - blocked < 3.0 and time.monotonic() - start < 60
    assert sorted(part_rows(tmp_path / "out")) == [(m, i) for m in ("best_of_n", "pretrained") for i in (0, 1)]
    flag.unlink()  # the abandoned call returns; the rerun resumes
    assert decode(config, tmp_path / "out") is None
    assert rows(tmp_path / "out") == rows(tmp_path / "full")


def test_sigterm_to_a_two_process_decode_while_both_rewards_hang_stops_both_ranks(tiny, tmp_path):
    flag = tmp_path / "hang"
    config = config_with(tiny, tmp_path / "c.yaml", "HangsAfterCalls", flag=str(flag), calls=3)
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    for key in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK"):
        env.pop(key, None)

    def launch(out: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(ROOT / "decode.py"), "predict", "--config", str(config),
                                 "--output_dir", str(out), "--data.num_samples", "8", *ddp], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    full = launch(tmp_path / "full")
    assert full.wait(timeout=240) == 0, full.stderr.read()[-2000:]
    flag.touch()
    run = launch(tmp_path / "out")
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("hang.*.blocked"))) < 2 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    assert len(list(tmp_path.glob("hang.*.blocked"))) == 2, run.stderr.read()[-2000:] if run.poll() is not None else ""
    run.send_signal(signal.SIGTERM)
    start = time.monotonic()
    code = run.wait(timeout=60)
    stderr = run.stderr.read()
    assert code != 0 and "error: stopped by SIGTERM" in stderr, stderr[-2000:]
    assert time.monotonic() - start < 15
    flag.unlink()
    rerun = launch(tmp_path / "out")
    assert rerun.wait(timeout=240) == 0, rerun.stderr.read()[-2000:]
    assert rows(tmp_path / "out") == rows(tmp_path / "full")
