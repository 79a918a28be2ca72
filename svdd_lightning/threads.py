"""Torch's intra-op threads from the cores this process may actually use.

PyTorch starts one OpenMP thread per CPU it sees. On a shared node, in a container with a CPU quota, or
with several DDP processes per node, that oversubscribes the cores: on a 2-core machine with one other
busy process, pretrained sampling of 32 DNA designs took 47-80 s instead of 1.8 s, its two threads
spin-waiting for each other. ``decode.py`` and ``train.py`` therefore set the threads of each process to
the available cores (affinity mask, capped by a cgroup CPU quota) divided by the processes the run
starts on this node, unless the user chose: ``OMP_NUM_THREADS`` or ``SVDD_NUM_THREADS`` in the
environment, or a ``torch.set_num_threads`` call made before the run.

Where other work shares the cores, ``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts) makes idle
OpenMP threads sleep instead of spinning: measured on 2 cores with one busy process, pretrained sampling
of 32 DNA designs took 3.5-4.1 s with it and 11-59 s without; on idle cores it cost 25-45% (docs/performance.md).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

ENV_VARS = ("SVDD_NUM_THREADS", "OMP_NUM_THREADS")
_THREADS_AT_IMPORT = torch.get_num_threads()


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def thread_setting(processes: int = 1) -> dict[str, Any]:
    """The intra-op threads for one of ``processes`` processes on this node, and where the number comes from."""
    for name in ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return {"threads": max(1, int(value)), "source": name}
            except ValueError:
                raise ValueError(f"{name} must be a whole number of threads, got {value!r}") from None
    if torch.get_num_threads() != _THREADS_AT_IMPORT:
        return {"threads": torch.get_num_threads(), "source": "torch.set_num_threads"}
    cores = available_cores()
    return {"threads": max(1, cores // max(1, processes)), "source": f"{cores} available cores / {processes} processes"}


def configure_threads(processes: int = 1) -> dict[str, Any]:
    """Apply :func:`thread_setting` to this process; returns it (with ``omp_wait_policy``)."""
    setting = thread_setting(processes)
    if torch.get_num_threads() != setting["threads"]:
        torch.set_num_threads(setting["threads"])
    global _THREADS_AT_IMPORT
    _THREADS_AT_IMPORT = torch.get_num_threads()  # our own setting is not a user's choice
    return {**setting, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


class ThreadSetting(L.Callback):
    """Sets each process's intra-op threads at setup: the available cores shared by the processes the run
    starts on this node (one per device under DDP), unless the user chose (see the module docstring)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        setting = configure_threads(processes=trainer.num_devices)
        rank_zero_info(f"torch intra-op threads per process: {setting['threads']} ({setting['source']})")


def machine_record(processes: int = 1) -> dict[str, Any]:
    """What a benchmark result must say about where it ran: the platform, torch, the available cores, the
    thread setting of each of ``processes`` processes, OpenMP's wait policy, the GPU and the load average."""
    import platform

    setting = thread_setting(processes)
    return {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpus": os.cpu_count(), "available_cores": available_cores(), "processes": processes,
        "torch_threads": setting["threads"], "threads_source": setting["source"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
