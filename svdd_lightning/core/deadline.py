"""Calls with a time limit: a reward that hangs (an oracle behind a network, docking on a pathological
molecule, user code) must not stall a run, and a stop request (SIGTERM) must be honoured while it runs.

The call runs in a daemon worker thread while the caller waits in short slices, asking ``should_stop()``
between them. A call that runs past its limit, or is waited on when a stop comes, is abandoned with its
thread (its result, if it ever comes, is dropped) and the next call starts a fresh thread. The caller's
thread-local torch state (grad and inference modes, CUDA device, function and dispatch modes) is carried into
the worker, so the call computes what it would in the caller.
"""
from __future__ import annotations

import queue
import threading
import time
from contextlib import ExitStack, contextmanager
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Iterator

import torch
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

#: seconds between two looks at ``should_stop`` while a call runs
POLL_SECONDS = 0.1


class CallTimedOut(Exception):
    """The call ran past its time limit; its worker thread was abandoned."""


class CallInterrupted(Exception):
    """A stop was requested (e.g. SIGTERM) while waiting for the call; its worker thread was abandoned."""


def _caller_context() -> tuple:
    """The thread-local torch state a call depends on: grad and inference modes, the current CUDA device,
    and the active torch function / dispatch modes (device stand-ins, tracers)."""
    cuda = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return (torch.is_inference_mode_enabled(), torch.is_grad_enabled(), cuda,
            _get_current_function_mode_stack(), _get_current_dispatch_mode_stack())


@contextmanager
def _entered(context: tuple) -> Iterator[None]:
    inference, grad, cuda, function_modes, dispatch_modes = context
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(inference))
        stack.enter_context(torch.set_grad_enabled(grad))
        if cuda is not None:
            torch.cuda.set_device(cuda)
        for mode in (*function_modes, *dispatch_modes):
            stack.enter_context(mode)
        yield


def _serve(tasks: queue.SimpleQueue) -> None:
    while (task := tasks.get()) is not None:
        fn, args, context, future = task
        if not future.set_running_or_notify_cancel():
            continue
        try:
            with _entered(context):
                future.set_result(fn(*args))
        except BaseException as err:  # handed to the caller, who decides
            future.set_exception(err)


class TimedCalls:
    """Runs ``fn(*args)`` in a worker thread and waits at most ``timeout`` seconds (None: no limit)."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue | None = None

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None,
             should_stop: Callable[[], bool] | None = None) -> Any:
        """``fn(*args)``'s result or exception; :class:`CallTimedOut` past ``timeout``, :class:`CallInterrupted`
        as soon as ``should_stop()`` is true."""
        if self._tasks is None:
            self._tasks = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(self._tasks,), name="timed-call", daemon=True).start()
        future: Future = Future()
        self._tasks.put((fn, args, _caller_context(), future))
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SECONDS if end is None else max(min(POLL_SECONDS, end - time.monotonic()), 0.0)
            try:
                return future.result(timeout=left)
            except FutureTimeout:
                pass
            if should_stop is not None and should_stop():
                self._abandon()
                raise CallInterrupted("stopped while waiting for the call")
            if end is not None and time.monotonic() >= end:
                self._abandon()
                raise CallTimedOut(f"no result after {timeout:g} s")

    def _abandon(self) -> None:
        """Leave the busy worker to finish on its own (it exits after its call) and start afresh next time."""
        if self._tasks is not None:
            self._tasks.put(None)
            self._tasks = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_tasks": None}  # a copy (pickled, deep-copied) starts its own worker
