"""Bounds checking for Triton's CPU interpreter (``TRITON_INTERPRET=1``).

The interpreter executes a masked load, store or atomic at every address whose mask bit is
set, straight on host memory: an address past a tensor reads whatever the heap holds there
(stale floats, sometimes NaN) instead of faulting, so a kernel that runs off a tensor's end
fails only now and then. :func:`checked_memory` makes every such access raise at once unless
it lies inside the storage of one of the launched kernel's tensor arguments.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


class OutOfBoundsAccess(AssertionError):
    """A kernel touched memory outside every tensor argument of its launch."""


class _State:
    def __init__(self) -> None:
        self.kernel = "?"
        self.ranges: list[tuple[int, int]] = []  # [start, end) byte addresses
        self.checked = 0  # addresses checked since install


def _storage_ranges(arg, out: list[tuple[int, int]]) -> None:
    if isinstance(arg, (tuple, list)):
        for a in arg:
            _storage_ranges(a, out)
        return
    if not hasattr(arg, "untyped_storage"):
        arg = getattr(arg, "base", None)  # a TensorDescriptor's tensor
        if not hasattr(arg, "untyped_storage"):
            return
    s = arg.untyped_storage()
    out.append((s.data_ptr(), s.data_ptr() + s.nbytes()))


class _CheckedOps:
    """Stands in for the interpreter's native module: checks, then forwards."""

    def __init__(self, native, state: _State) -> None:
        self._native = native
        self._state = state

    def __getattr__(self, name):
        return getattr(self._native, name)

    def _check(self, kind: str, ptrs, mask, itemsize: int) -> None:
        p = np.asarray(ptrs).astype(np.uint64).ravel()
        if mask is not None:
            m = np.broadcast_to(np.asarray(mask).astype(bool), np.shape(ptrs)).ravel()
            p = p[m]
        if p.size == 0:
            return
        st = self._state
        st.checked += p.size
        ok = np.zeros(p.shape, dtype=bool)
        for lo, hi in st.ranges:
            ok |= (p >= lo) & (p + itemsize <= hi)
        if ok.all():
            return
        bad = int(p[~ok][0])
        near = min(st.ranges, key=lambda r: min(abs(bad - r[0]), abs(bad - r[1])),
                   default=None)
        where = "" if near is None else (
            f"; nearest argument storage is {near[1] - near[0]} bytes, the address is at "
            f"byte offset {bad - near[0]} of it")
        raise OutOfBoundsAccess(
            f"{st.kernel}: {kind} of {int((~ok).sum())} of {p.size} unmasked addresses "
            f"outside every tensor argument{where}")

    def load(self, ptrs, mask, other, dtype):
        self._check("load", ptrs, mask, np.dtype(dtype).itemsize)
        return self._native.load(ptrs, mask, other, dtype)

    def store(self, ptrs, value, mask):
        self._check("store", ptrs, mask, np.asarray(value).dtype.itemsize)
        return self._native.store(ptrs, value, mask)

    def atomic_rmw(self, op, ptrs, val, mask, sem):
        self._check("atomic_rmw", ptrs, mask, np.asarray(val).dtype.itemsize)
        return self._native.atomic_rmw(op, ptrs, val, mask, sem)

    def atomic_cas(self, ptrs, cmp, val, sem):
        self._check("atomic_cas", ptrs, None, np.asarray(val).dtype.itemsize)
        return self._native.atomic_cas(ptrs, cmp, val, sem)


@contextlib.contextmanager
def checked_memory() -> Iterator[_State]:
    """Within the block every interpreted launch is bounds checked (see the module doc).

    Yields the checker's state; ``state.checked`` counts the addresses checked so far.
    Raises ``RuntimeError`` where this Triton's interpreter lacks the hooks it patches.
    """
    import triton.runtime.interpreter as interp

    native = getattr(interp, "_interpreter", None)
    executor = getattr(interp, "GridExecutor", None)
    init = getattr(executor, "_init_args_hst", None)
    if native is None or init is None or not all(
            hasattr(native, n) for n in ("load", "store", "atomic_rmw", "atomic_cas")):
        raise RuntimeError("triton.runtime.interpreter has no _interpreter.load/store/atomic_* "
                           "or GridExecutor._init_args_hst: the bounds checker needs updating "
                           "for this Triton release")
    state = _State()

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = init(self, args_dev, kwargs)
        state.kernel = getattr(self.fn, "__name__", "kernel")
        state.ranges = []
        _storage_ranges(list(args_hst), state.ranges)
        _storage_ranges(list(kwargs_hst.values()), state.ranges)
        return args_hst, kwargs_hst

    interp._interpreter = _CheckedOps(native, state)
    executor._init_args_hst = init_args
    try:
        yield state
    finally:
        interp._interpreter = native
        executor._init_args_hst = init
