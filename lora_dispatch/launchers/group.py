"""Launch groups: several ``fast_launch`` kernels issued back to back by one native call.

A layer that always launches the same kernels in sequence (a shrink, then the expand that
reads it) pays the per-launch Python work once per kernel: the ``kernel[grid]`` partial, the
generated launch function's guards, the stream query and a C call each. A
:class:`LaunchGroup` does that once for the whole sequence: it checks every kernel's guards,
reads the stream once and hands all calls to ``fl_launch_group``, which keys and looks up
every kernel before it launches the first. If any call would need Triton (a variant not
compiled yet, an unsupported argument, hooks installed, another tier), nothing is launched
and the group returns False: the caller then launches each kernel the usual way, which
compiles and registers the variants for the next call.

>>> group = LaunchGroup(shrink_kernel, expand_kernel)
>>> slots = (*shrink_args, *group.options(0, num_warps=4, num_stages=4),
...          *expand_args, *group.options(1, num_warps=4, num_stages=1))
>>> if not group((shrink_grid, expand_grid), slots):
...     shrink_kernel[shrink_grid](*shrink_args, num_warps=4, num_stages=4)
...     expand_kernel[expand_grid](*expand_args, num_warps=4, num_stages=1)

``slots`` holds every kernel parameter in signature order (constexprs included, defaults
not filled in), then the launch options of :meth:`LaunchGroup.options`.

When most slots stay the same from call to call (weights, index tensors, constexprs),
:meth:`LaunchGroup.bind` keys them once and :meth:`LaunchGroup.launch_bound` passes and keys
only the others:

>>> bound = group.bind(slots, varying=(0, 7))  # slots 0 and 7 (x, out) change per call
>>> if bound is None or not group.launch_bound(bound, grids, (x, out)):
...     bound = None  # launch each kernel the usual way, bind again next call

A caller with its own per-call cache can take :meth:`launch_bound`'s pieces once
(:meth:`LaunchGroup.hot`) and skip its Python layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from . import native as _native
from .codegen import NOT_SET, OPTION_KEYWORDS
from .fast import FastLauncher

__all__ = ["LaunchGroup"]

_MAX = 4  # native.c MAX_GROUP


def _same(a: tuple | None, b: tuple) -> bool:
    return a is not None and len(a) == len(b) and all(u is v for u, v in zip(a, b))


def _param_names(jit: Any) -> tuple[str, ...]:
    names = getattr(jit, "arg_names", None)
    if names is None:
        names = tuple(inspect.signature(jit.fn).parameters)
    return tuple(names)


class LaunchGroup:
    """Kernels launched in order on the current stream by one native call.

    Parameters
    ----------
    *kernels : FastLauncher
        One to four ``@fast_launch`` kernels.

    Attributes
    ----------
    kernels : tuple of FastLauncher
    launches : int
        Calls that launched the whole group (the others returned False).
    """

    def __init__(self, *kernels: Any) -> None:
        if not 1 <= len(kernels) <= _MAX:
            raise ValueError(f"a launch group takes 1 to {_MAX} kernels, got {len(kernels)}")
        for k in kernels:
            if not isinstance(k, FastLauncher):
                raise TypeError(f"kernels must be @fast_launch kernels, got {type(k).__name__}")
        self.kernels = kernels
        self._opts = tuple(
            tuple(o for o in OPTION_KEYWORDS if o not in _param_names(k._fl_jit))
            for k in kernels)
        self._state: tuple | None = None
        self._valid = False  # _state reflects the launchers (they invalidate it on change)
        for k in kernels:
            k._fl_groups.add(self)
        self.launches = 0

    def options(self, i: int, **opts: Any) -> tuple:
        """The option slots of kernel ``i`` for ``opts`` (``num_warps=`` ...), in slot order.

        Returns
        -------
        tuple
        """
        unknown = set(opts) - set(self._opts[i])
        if unknown:
            raise TypeError(f"unknown launch options {sorted(unknown)}")
        return tuple(opts.get(o, NOT_SET) for o in self._opts[i])

    def _invalidate(self) -> None:
        self._valid = False

    def _refresh(self) -> tuple | None:
        self._valid = True
        self._state = None
        nss = [k._fl_ns for k in self.kernels if not k._fl_plain]
        if len(nss) == len(self.kernels) and all(ns is not None and "_fl_nat" in ns
                                                 for ns in nss):
            single = all("_fl_cache" in ns for ns in nss)
            mod = _native.load()  # loaded already: it built the tables
            snap = nss[0].get("_fl_global_snap")
            self._state = (
                tuple(ns["_fl_nat"] for ns in nss),
                # the first kernel's full guard; the others' own checks where Triton's global
                # state they were built against is the same objects (checked once)
                tuple(ns["_fl_ready_local"] if i and "_fl_ready_local" in ns and snap is not None
                      and _same(ns.get("_fl_global_snap"), snap) else ns["_fl_ready"]
                      for i, ns in enumerate(nss)),
                nss[0]["_fl_stream"],
                None if single else nss[0]["_fl_getdev"],
                nss[0]["_fl_natgroup"],
                mod.fl_bind,
                mod.fl_launch_bound,
            )
        return self._state

    @property
    def native(self) -> bool:
        """Whether every kernel is built with the native tier (the group can launch)."""
        return self._refresh() is not None

    def available(self) -> bool:
        """Cheap check before assembling slots: every kernel has a native table now."""
        return (self._state if self._valid else self._refresh()) is not None

    def _ready(self) -> tuple:
        """``(state, device)`` where every kernel's guard passes now, else ``(None, None)``:
        the checks of every launch (state: native tables, guards, stream, device getter,
        ``fl_launch_group``, ``fl_bind``, ``fl_launch_bound``)."""
        state = self._state if self._valid else self._refresh()
        if state is None:
            return None, None
        for ready in state[1]:
            if not ready():
                return None, None
        getdev = state[3]
        return state, 0 if getdev is None else getdev()

    def __call__(self, grids: tuple, slots: tuple) -> bool:
        """Launch every kernel with its grid; False (nothing launched) if one cannot be.

        Parameters
        ----------
        grids : tuple of tuple of int
            One grid (1 to 3 ints) per kernel.
        slots : tuple
            Each kernel's parameters then its option slots, kernel after kernel.

        Returns
        -------
        bool
        """
        state, dev = self._ready()
        if state is None:
            return False
        if state[4](state[0], grids, state[2](dev), dev, *slots) is NotImplemented:
            return False
        self.launches += 1
        return True

    def bind(self, slots: tuple, varying: tuple[int, ...]) -> Any:
        """Key every slot but ``varying`` once, for :meth:`launch_bound`.

        The returned object holds the current native tables, the current device and strong
        references to the fixed slot objects, with what their keys read (a tensor's dtype
        and ``data_ptr()``, a descriptor's base, block shape and layout). While it is used,
        the fixed tensors must keep their storage: no ``set_``, ``resize_`` or ``.data``
        assignment, no reallocation. When any fixed object changes, bind again.

        Parameters
        ----------
        slots : tuple
            As for :meth:`__call__`; the values at ``varying`` are placeholders (ignored).
        varying : tuple of int
            Sorted indices into ``slots`` of the slots passed to every :meth:`launch_bound`.

        Returns
        -------
        object or None
            None when the group is not native now or a fixed slot is not keyed in C (the
            caller launches through :meth:`__call__` or each kernel).
        """
        state = self._state if self._valid else self._refresh()
        if state is None:
            return None
        getdev = state[3]
        return state[5](state[0], varying, 0 if getdev is None else getdev(), *slots)

    def hot(self, bound: Any) -> tuple[Callable[[], bool], Any, tuple, Any, int] | None:
        """:meth:`launch_bound`'s pieces, for a caller that caches them per call site.

        Returns ``(ready, launch, tables, stream, dev)``, or None where the group is not
        native now. ``ready()`` is True while :meth:`launch_bound` would pass its guards with
        these pieces: the group's native tables unchanged, every kernel's guard passing, and
        the current device ``dev``. Then ``launch(bound, tables, grids, stream(dev), dev,
        *values)`` is :meth:`launch_bound`'s native call: it returns NotImplemented where
        nothing was launched (drop the pieces and ``bound``), else None (the caller adds one
        to :attr:`launches`).

        Parameters
        ----------
        bound : object
            What :meth:`bind` returned.

        Returns
        -------
        tuple or None
        """
        state = self._state if self._valid else self._refresh()
        if state is None or bound is None:
            return None
        getdev = state[3]
        dev = 0 if getdev is None else getdev()
        readies = state[1]
        if getdev is None and len(readies) == 2:  # the common case, unrolled
            r0, r1 = readies

            def ready() -> bool:
                return self._valid and self._state is state and r0() and r1()
        else:
            def ready() -> bool:
                if not self._valid or self._state is not state:
                    return False
                now, at = self._ready()
                return now is state and at == dev

        return ready, state[6], state[0], state[2], dev

    def launch_bound(self, bound: Any, grids: tuple, values: tuple) -> bool:
        """:meth:`__call__` for the slots of :meth:`bind` with ``values`` at ``varying``.

        Parameters
        ----------
        bound : object
            What :meth:`bind` returned (None: returns False).
        grids : tuple of tuple of int
            One grid (1 to 3 ints) per kernel.
        values : tuple
            The varying slots, in ``varying`` order.

        Returns
        -------
        bool
            False (nothing launched) where :meth:`__call__` would return False, and when
            ``bound`` was made for other native tables (the launchers were rebuilt) or
            another device: the caller then launches the kernels the usual way and binds
            again (a stale ``bound`` never launches).
        """
        if bound is None:
            return False
        state, dev = self._ready()
        if state is None:
            return False
        if state[6](bound, state[0], grids, state[2](dev), dev, *values) is NotImplemented:
            return False
        self.launches += 1
        return True
