"""Output folders: checked for writability before any work, locked while a decode runs, written atomically."""
from __future__ import annotations

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


def acquire_lock(folder: Path) -> Path:
    """Take ``folder``'s decode lock; a lock held by a live process is a one-line refusal naming its host
    and pid, one left by a dead process of this host is taken over."""
    path = folder / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_json(path)
            if _stale(holder, path, me):
                path.unlink(missing_ok=True)
                continue
            raise ValueError(f"output_dir {folder} is in use by another decode (host {holder.get('host', '?')}, "
                             f"pid {holder.get('pid', '?')}, since {holder.get('since', '?')}); wait for it to end or "
                             f"choose another --output_dir (if that process is gone, delete {path})") from None
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        return path
    raise ValueError(f"output_dir {folder}: could not take the lock {path}; another decode keeps taking it")


def _stale(holder: dict, path: Path, me: dict) -> bool:
    if not holder:  # unreadable: its writer died between creating and filling it, or is doing so now
        return time.time() - path.stat().st_mtime > 60
    if holder.get("host") != me["host"]:
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == me["pid"]:  # my pid in a lock I did not take: a reused pid
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
