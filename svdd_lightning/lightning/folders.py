"""Output folders: checked for writability before any work, locked while a decode runs, written atomically."""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

LOCK = ".decode.lock"


class ReportedByRankZero(ValueError):
    """An error of the whole run (a refused folder, an incomplete merge) that global rank 0 reports;
    the other processes only stop."""


def check_writable(folder: Path, field: str) -> None:
    """Create ``folder`` and write a file in it, or raise a one-line error naming ``field``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except FileExistsError:
        raise ValueError(f"{field} {folder} is a file, not a folder") from None
    except NotADirectoryError:
        raise ValueError(f"{field} {folder} cannot be created: a parent of it is a file") from None
    except OSError as err:
        raise ValueError(f"{field} {folder} is not writable ({err.strerror or err}); choose another folder") from None


def write_error(folder: Path, err: OSError) -> ValueError:
    """The one-line error of a failed write into ``folder``: its cause, the folder's free space and the fix."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = _size(shutil.disk_usage(existing).free)
    except OSError:
        free = "unknown"
    fix = "free space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    return ValueError(f"cannot write to {folder} ({err.strerror or err}; {free} free): {fix} and rerun, "
                      f"finished batches are kept")


def _size(n: float) -> str:
    """A byte count for people: 0 B, 312.4 MiB."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.0f} B" if k == 0 else f"{n:.1f} {units[k]}"


def acquire_lock(folder: Path) -> tuple[Path, dict | None]:
    """Take ``folder``'s decode lock, written whole under a temporary name and hard-linked into place (never
    empty or partial) with its owner's host, pid and start time. A lock held by a live process is a one-line
    refusal naming them; one whose owner is gone (this host and a dead pid, or an unreadable lock) is taken
    over at once. Returns the lock and, after a takeover, the gone owner's host, pid and age in seconds."""
    path = folder / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = folder / f"{LOCK}.{me['host']}.{me['pid']}.tmp"  # unique among the hosts sharing the folder
    taken_over = None
    try:
        with open(tmp, "w") as handle:
            json.dump(me, handle)
            handle.flush()
            os.fsync(handle.fileno())
        for _ in range(3):
            try:
                os.link(tmp, path)
                return path, taken_over
            except FileExistsError:
                holder = read_json(path)
                if not _gone(holder, me):
                    raise ValueError(
                        f"output_dir {folder} is in use by another decode (host {holder.get('host', '?')}, pid "
                        f"{holder.get('pid', '?')}, since {holder.get('since', '?')}); wait for it to end or choose "
                        f"another --output_dir (if that process is gone, delete {path})") from None
                try:
                    age = time.time() - path.stat().st_mtime
                    path.unlink()
                except FileNotFoundError:  # its owner released it meanwhile
                    continue
                taken_over = {"host": holder.get("host"), "pid": holder.get("pid"), "age_seconds": round(age, 1)}
        raise ValueError(f"output_dir {folder}: could not take the lock {path}; another decode keeps taking it")
    finally:
        tmp.unlink(missing_ok=True)


def takeover_line(folder: Path, owner: dict) -> str:
    """The line reporting that ``folder``'s lock of a gone decode (``owner``: host, pid, age) was taken over."""
    age = int(owner["age_seconds"])
    return (f"took over the lock of output_dir {folder} left by a decode that is gone (host {owner['host'] or '?'}, "
            f"pid {owner['pid'] or '?'}, age {age // 3600}h{age // 60 % 60:02d}m{age % 60:02d}s)")


def _gone(holder: dict, me: dict) -> bool:
    """Whether the lock's owner is gone: unreadable (locks are written whole, so it is damaged), or of this
    host with a dead pid or this very pid (a restarted container reuses host name and pids)."""
    if not holder:
        return True
    if holder.get("host") != me["host"]:
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == me["pid"]:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def release_lock(path: Path) -> None:
    """Remove the lock if this process holds it."""
    holder = read_json(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def atomic_write(path: Path, content: str | Callable[[Path], object]) -> None:
    """Write a file through a temporary name and a rename: a reader sees the old or the new file.
    ``content`` is the text, or a function that writes the file at the path it is given."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if callable(content):
        content(tmp)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)


def replace_directory(source: Path, target: Path) -> None:
    """Move the finished folder ``source`` to ``target``, replacing it: a reader sees the old or the new
    folder, never a mix of both (during the swap, briefly neither)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    os.rename(source, target)
    shutil.rmtree(old, ignore_errors=True)
