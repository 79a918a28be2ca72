"""Torch threads from the available cores, per process, unless the user chose."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from svdd_lightning import threads


@pytest.fixture
def no_user_choice(monkeypatch):
    for name in threads.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_THREADS_AT_IMPORT", torch.get_num_threads())
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_are_the_available_cores_shared_by_the_processes_of_the_node(no_user_choice):
    assert threads.thread_setting(1) == {"threads": 8, "source": "8 available cores / 1 processes"}
    assert threads.thread_setting(2)["threads"] == 4
    assert threads.thread_setting(16)["threads"] == 1
    threads.ThreadSetting().setup(SimpleNamespace(num_devices=2), None, "fit")  # 2 DDP processes on this node
    assert torch.get_num_threads() == 4


@pytest.mark.parametrize("name", threads.ENV_VARS)
def test_an_explicit_environment_setting_wins(no_user_choice, monkeypatch, name):
    monkeypatch.setenv(name, "3")
    assert threads.thread_setting(2) == {"threads": 3, "source": name}
    monkeypatch.setenv(name, "many")
    with pytest.raises(ValueError, match=f"{name} must be a whole number"):
        threads.thread_setting(2)


def test_a_torch_set_num_threads_call_before_the_run_wins(no_user_choice):
    torch.set_num_threads(torch.get_num_threads() % 2 + 1)  # a value other than the one at import
    chosen = torch.get_num_threads()
    threads.ThreadSetting().setup(SimpleNamespace(num_devices=1), None, "predict")
    assert torch.get_num_threads() == chosen


def test_cgroup_quota_caps_the_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(threads, "_cgroup_cpu_limit", lambda: 2.5)
    assert threads.available_cores() == 2
    monkeypatch.setattr(threads, "_cgroup_cpu_limit", lambda: None)
    assert threads.available_cores() == 16


def test_cgroup_files_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert threads._cgroup_cpu_limit(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads._cgroup_cpu_limit(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert threads._cgroup_cpu_limit(tmp_path) is None


def test_machine_record_names_the_thread_setting(no_user_choice):
    record = threads.machine_record(processes=2)
    assert record["torch_threads"] == 4 and record["processes"] == 2 and record["available_cores"] == 8
    assert "omp_wait_policy" in record and "torch" in record
