"""Worker processes for CPU-bound batched rewards (RDKit, ViennaRNA, JPEG encoding)."""
from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence


class ChunkedWorkers:
    """Maps a picklable ``fn(chunk: list) -> list`` over a list in ``processes`` worker processes.

    Workers are spawned (safe beside threads) on the first list of at least ``2 * min_chunk`` items and
    kept until :meth:`close`; shorter lists, or ``processes = 1``, run in this process. About four
    chunks go to each worker. Pickling drops the workers (a copy starts its own).
    """

    def __init__(self, processes: int = 1, min_chunk: int = 16, owner: str = "reward") -> None:
        if processes < 1:
            raise ValueError(f"{owner}.processes must be at least 1, got {processes}")
        self.processes, self.min_chunk = processes, min_chunk
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[list], list], items: Sequence[Any]) -> list:
        return self.submit(fn, items)()

    def submit(self, fn: Callable[[list], list], items: Sequence[Any]) -> Callable[[], list]:
        """Like :meth:`map`, but returns at once: calling the result waits for the values. In the workers the
        chunks run while the caller goes on (e.g. denoises the next candidates); in this process (one
        process, or a short list) the values are computed before returning."""
        items = list(items)
        if self.processes == 1 or len(items) < 2 * self.min_chunk:
            values = list(fn(items))
            return lambda: values
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"))
        size = max(self.min_chunk, math.ceil(len(items) / (4 * self.processes)))
        futures = [self._pool.submit(fn, items[i: i + size]) for i in range(0, len(items), size)]
        return lambda: [value for future in futures for value in future.result()]

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}
