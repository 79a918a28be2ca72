"""A stand-in accelerator for CPU-only tests: tensors that compute on the CPU but report another device.

``with FakeAccelerator() as accel:`` makes ``module.to(accel.device)`` (and ``tensor.to``, factories
with ``device=accel.device``) give :class:`OnDevice` tensors: their data stays on the CPU, their
``device`` is ``meta``, and every operation on them checks what CUDA would check:

- all non-scalar tensor arguments on one device ("Expected all tensors to be on the same device");
  0-dim CPU tensors mix freely, CPU index tensors may index a device tensor, ``copy_`` and ``to``
  cross devices;
- a random draw on the device with a CPU generator fails ("Expected a 'cuda' device type for
  generator");
- ``.numpy()`` of a device tensor fails (move it with ``.cpu()`` first).

It counts what a GPU run would pay for: bytes downloaded to the host (``.cpu()``, ``.to("cpu")``,
cross-device ``copy_``), bytes uploaded, and host syncs (``.item()``, ``.tolist()``, ``bool()``, and the
data-dependent ``nonzero`` / ``unique``). Results are bit-identical to a CPU run, so a test can check that
decoding on "the device" gives the CPU run's samples.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")
aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten._unique2.default,
            aten.unique_dim.default, aten.unique_consecutive.default, aten.masked_select.default,
            aten.is_nonzero.default, aten.equal.default}
CROSS_DEVICE_OPS = {aten._to_copy.default, aten.copy_.default}
#: ops whose index tensors may stay on the CPU for a device tensor (CUDA moves them)
CPU_INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


@dataclass
class Traffic:
    downloaded_bytes: int = 0
    uploaded_bytes: int = 0
    syncs: int = 0


class OnDevice(torch.Tensor):
    """A CPU tensor ``payload`` presented as a tensor on :data:`DEVICE`."""

    payload: torch.Tensor

    @staticmethod
    def __new__(cls, payload: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, payload.shape, strides=payload.stride(), storage_offset=payload.storage_offset(),
            dtype=payload.dtype, layout=payload.layout, device=DEVICE, requires_grad=payload.requires_grad)

    def __init__(self, payload: torch.Tensor) -> None:
        self.payload = payload

    def __repr__(self, *, tensor_contents=None) -> str:  # noqa: D105
        return f"OnDevice({self.payload!r})"

    def tolist(self):
        FakeAccelerator.active().traffic.syncs += 1
        return self.payload.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert meta device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return FakeAccelerator.active().dispatch(func, args, kwargs or {})


def _on_device(device) -> bool:
    return device is not None and torch.device(device).type == DEVICE.type


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _TensorConstructors(TorchFunctionMode):
    """``torch.tensor(data, device=...)`` and friends build their tensor without a dispatch an operator mode
    sees: build it on the CPU and move it."""

    FUNCTIONS = (torch.tensor, torch.as_tensor, torch.scalar_tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FUNCTIONS and _on_device(kwargs.get("device")):
            return func(*args, **{**kwargs, "device": "cpu"}).to(DEVICE)
        return func(*args, **kwargs)


class FakeAccelerator(TorchDispatchMode):
    """Context manager: inside it :data:`DEVICE` behaves like a GPU for the checks above."""

    _stack: list["FakeAccelerator"] = []

    def __init__(self) -> None:
        super().__init__()
        self.device = DEVICE
        self.traffic = Traffic()

    @classmethod
    def active(cls) -> "FakeAccelerator":
        if not cls._stack:
            raise RuntimeError("a fake-device tensor was used outside `with FakeAccelerator()`")
        return cls._stack[-1]

    def __enter__(self):
        FakeAccelerator._stack.append(self)
        self._constructors = _TensorConstructors()
        self._constructors.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        FakeAccelerator._stack.pop()
        result = super().__exit__(*exc)
        self._constructors.__exit__(*exc)
        return result

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.dispatch(func, args, kwargs or {})

    def dispatch(self, func, args, kwargs):
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        device_in = [t for t in tensors if isinstance(t, OnDevice)]
        to_device = any(isinstance(a, torch.device) and _on_device(a) for a in flat)
        if not device_in and not to_device:
            return func(*args, **kwargs)
        if func.overloadpacket is aten.to:  # reached here under inference mode, before its decomposition
            return self._to(args, kwargs, flat)

        generator = kwargs.get("generator")
        if generator is not None and generator.device.type == "cpu":
            raise RuntimeError("Expected a 'cuda' device type for generator but found 'cpu'")
        if func in SYNC_OPS:
            self.traffic.syncs += 1
        if func is aten._to_copy.default:
            return self._to_copy(args[0], kwargs)
        if func is aten.copy_.default:
            return self._copy(args[0], args[1], kwargs)
        self._check_same_device(func, args, tensors)

        unwrap = lambda t: t.payload if isinstance(t, OnDevice) else t  # noqa: E731
        unwrap_all = lambda t: torch.device("cpu") if isinstance(t, torch.device) and _on_device(t) else unwrap(t)  # noqa: E731
        out = func(*tree_map(unwrap_all, args), **tree_map(unwrap_all, kwargs))
        originals = {id(t.payload): t for t in device_in}  # in-place ops return their (wrapped) input

        def wrap(t):
            if not isinstance(t, torch.Tensor):
                return t
            original = originals.get(id(t))
            return OnDevice(t) if original is None else original

        return tree_map(wrap, out)

    def _check_same_device(self, func, args, tensors) -> None:
        plain = [t for t in tensors if not isinstance(t, OnDevice) and t.dim() > 0]
        if not plain:
            return
        if func in CPU_INDEX_OPS:
            target = args[0]
            if not isinstance(target, OnDevice) and target.dim() > 0:
                raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor (cpu)")
            values = [t for t in args[2:] if isinstance(t, torch.Tensor)]  # index_put's values
            if all(isinstance(t, OnDevice) or t.dim() == 0 for t in values):
                return
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"{DEVICE} and cpu! ({func})")

    def _to(self, args, kwargs, flat) -> torch.Tensor:
        src = args[0]
        device = next((a for a in flat if isinstance(a, torch.device)), None)
        dtype = next((a for a in flat if isinstance(a, torch.dtype)), None)
        same_device = device is None or _on_device(device) == isinstance(src, OnDevice)
        if same_device and (dtype is None or dtype == src.dtype) and not kwargs.get("copy", False):
            return src
        return self._to_copy(src, {k: v for k, v in (("dtype", dtype), ("device", device)) if v is not None})

    def _to_copy(self, src: torch.Tensor, kwargs: dict) -> torch.Tensor:
        device = kwargs.get("device")
        kwargs = {**kwargs, "device": torch.device("cpu")} if device is not None else kwargs
        if isinstance(src, OnDevice):
            out = aten._to_copy.default(src.payload, **kwargs)
            if device is None or _on_device(device):
                return OnDevice(out)
            self.traffic.downloaded_bytes += _nbytes(out)
            return out
        out = aten._to_copy.default(src, **kwargs)
        self.traffic.uploaded_bytes += _nbytes(out)
        return OnDevice(out)

    def _copy(self, dst: torch.Tensor, src: torch.Tensor, kwargs: dict) -> torch.Tensor:
        if isinstance(dst, OnDevice) != isinstance(src, OnDevice):
            if isinstance(src, OnDevice):
                self.traffic.downloaded_bytes += _nbytes(dst)
            else:
                self.traffic.uploaded_bytes += _nbytes(dst)
        unwrap = lambda t: t.payload if isinstance(t, OnDevice) else t  # noqa: E731
        aten.copy_.default(unwrap(dst), unwrap(src), **kwargs)
        return dst


@contextmanager
def counting(accel: FakeAccelerator):
    """The traffic of the block (a fresh :class:`Traffic`), on top of nothing counted before."""
    before, accel.traffic = accel.traffic, Traffic()
    try:
        yield accel.traffic
    finally:
        traffic = accel.traffic
        accel.traffic = Traffic(before.downloaded_bytes + traffic.downloaded_bytes,
                                before.uploaded_bytes + traffic.uploaded_bytes, before.syncs + traffic.syncs)
