"""Progress of a decoding run per method and per denoising step.

In a terminal, one bar counts samples (fractions of a sample as its denoising steps pass) and names
the method, batch and step; in a log (a cluster job, ``decode.py ... 2> log``) a line every
``interval`` seconds gives the samples done, the rate and the time left::

    decode: 96.5/1024 samples (9.4%) | svdd_pm batch 4/32 step 77/128 | 2.13 samples/s | ETA 7m16s

Under DDP, global rank 0 shows its own share. The callback replaces Lightning's batch progress
bar and stays silent when ``trainer.enable_progress_bar`` is false.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class DecodeProgress(L.Callback):
    """Shows a :class:`~svdd_lightning.lightning.decoding.DecodingModule` run's progress.

    Args:
        interval: seconds between two progress lines when the output is not a terminal.
        bar: a terminal bar (True), log lines (False), or decide by whether stderr is a terminal (None).
    """

    def __init__(self, interval: float = 30.0, bar: bool | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"progress.interval must be > 0 seconds, got {interval}")
        self.interval, self.bar = interval, bar
        self.enabled = False
        self.stream: TextIO = sys.stderr
        self._tqdm: Any = None

    # --- Lightning hooks --------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        lightning_bar = trainer.progress_bar_callback
        self.enabled = lightning_bar is not None and trainer.is_global_zero and hasattr(pl_module, "methods")
        if lightning_bar is not None:
            lightning_bar.disable()  # one display: this one

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        batches = self._rank_batches(trainer)
        finished = getattr(pl_module, "finished", {})
        todo = {m: [[i for i in batch if i not in finished.get(m, ())] for batch in batches] for m in pl_module.methods}
        self.per_method = {m: sum(map(len, b)) for m, b in todo.items()}
        self.num_batches = {m: sum(1 for batch in b if batch) for m, b in todo.items()}
        self.total = sum(self.per_method.values())
        self.batches_done = {m: 0 for m in self.per_method}
        self.done = 0.0
        self.started = self.last_line = time.monotonic()
        self.where = ""
        use_bar = self.stream.isatty() if self.bar is None else self.bar
        if use_bar:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.total, unit="sample", desc="decode", file=self.stream, dynamic_ncols=True,
                              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} [{elapsed}<{remaining}, "
                                         "{rate_fmt}{postfix}]")
        else:
            self._line(f"decode: {self.total} samples to decode ({', '.join(f'{m} {n}' for m, n in self.per_method.items())})")
        pl_module.progress = self

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        pl_module.progress = None
        seconds = time.monotonic() - self.started
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        self._line(f"decode: {self.done:.0f}/{self.total} samples in {_duration(seconds)}")

    # --- events from DecodingModule.predict_step --------------------------------------------------------
    def method_start(self, method: str, samples: int) -> None:
        """``method`` starts decoding a batch of ``samples`` samples."""
        self._method, self._samples, self._credited = method, samples, 0.0

    def step(self, level: int, num_steps: int) -> None:
        """The batch reached ``level`` of ``num_steps`` (a decoder that goes back never counts twice)."""
        target = self._samples * min(level, num_steps) / num_steps
        if target > self._credited:
            self._advance(target - self._credited, f"{self._where()} step {min(level, num_steps)}/{num_steps}")
            self._credited = target

    def method_done(self) -> None:
        """The batch is decoded: its samples count whole, whatever steps were reported."""
        self.batches_done[self._method] += 1
        self._advance(self._samples - self._credited, f"{self._where(finished=True)} done")

    # --- helpers ------------------------------------------------------------------------------------------
    def _where(self, finished: bool = False) -> str:
        batch = self.batches_done[self._method] + (0 if finished else 1)
        return f"{self._method} batch {batch}/{self.num_batches[self._method]}"

    def _advance(self, amount: float, where: str) -> None:
        self.done += amount
        self.where = where
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(where, refresh=False)
            self._tqdm.update(amount)
            if self.done >= self.total - 1e-6:
                self._tqdm.close()  # before the writer prints its summary
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self._line(f"decode: {self.done:.1f}/{self.total} samples ({100 * self.done / max(self.total, 1):.1f}%) | "
                       f"{where} | {rate:.2f} samples/s | ETA {_duration(eta) if eta != float('inf') else '?'}")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @staticmethod
    def _rank_batches(trainer: L.Trainer) -> list[list[int]]:
        """The sample indices of each batch this process will decode (spare placeholder items left out):
        Lightning's predict sharding gives rank r the items r, r + world, r + 2 world, ... (the loader is not
        iterated here: its batch sampler is shared with the running predict loop)."""
        loader = trainer.predict_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        size = getattr(loader.batch_sampler, "batch_size", None) or loader.batch_size or 1
        dataset = loader.dataset
        items = [dataset[i] for i in range(trainer.global_rank, len(dataset), trainer.world_size)]
        indices = [item["index"] for item in items]
        spare = [bool(item.get("spare", False)) for item in items]
        return [[i for i, s in zip(indices[k:k + size], spare[k:k + size]) if not s] for k in range(0, len(items), size)]
