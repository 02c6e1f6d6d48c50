"""``fast_launch``: a code-generated launcher for ``@triton.jit`` kernels.

``kernel[grid](*args, **options)`` through :class:`FastLauncher` computes a specialisation
key with inline expressions (see :mod:`.spec`), looks it up in its own per-device dict and,
on a hit, calls the compiled kernel's launcher directly. A miss runs Triton's own
``JITFunction.run`` once (which compiles and launches) and stores the CompiledKernel it
returns under the key. Anything unusual (launch hooks installed, ``pre_run_hooks``, changed
debug / instrumentation state, autotuners, the interpreter, unknown Triton releases) takes
Triton's own path.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from collections import namedtuple
from functools import partial
from typing import Any

from . import native as _native
from .codegen import OPTION_KEYWORDS, build_source
from .versions import Adapter, UnsupportedTriton, get_adapter

__all__ = [
    "CacheInfo",
    "FastLauncher",
    "fast_launch",
    "launcher_mode",
    "lean_launch_enabled",
    "set_launcher_mode",
    "set_lean_launch",
    "native_launch_enabled",
    "set_native_launch",
    "UnsupportedTriton",
]

logger = logging.getLogger("lora_dispatch.launchers")

CacheInfo = namedtuple("CacheInfo", ["hits", "misses", "variants", "fallbacks", "path"])

_ENV_VAR = "LORA_DISPATCH_LAUNCHER"
_LEAN_ENV = "LORA_DISPATCH_LEAN"
_lean: bool | None = None
_MODES = ("fast", "triton")
_mode: str | None = None
_live: weakref.WeakSet = weakref.WeakSet()
_logged: set[str] = set()
_log_lock = threading.Lock()


def _log_once(reason: str, level: int = logging.WARNING) -> None:
    with _log_lock:
        if reason in _logged:
            return
        _logged.add(reason)
    logger.log(level, "fast_launch falls back to Triton's own launch path: %s", reason)


def launcher_mode() -> str:
    """The launch mode: ``"fast"`` (default) or ``"triton"`` (plain ``JITFunction`` launches).

    Read once from ``LORA_DISPATCH_LAUNCHER``; :func:`set_launcher_mode` overrides it.

    Returns
    -------
    str
    """
    global _mode
    if _mode is None:
        value = os.environ.get(_ENV_VAR, "fast").strip().lower() or "fast"
        if value not in _MODES:
            _log_once(f"{_ENV_VAR}={value!r} is not one of {_MODES}; using 'fast'")
            value = "fast"
        _mode = value
    return _mode


def set_launcher_mode(mode: str | None) -> str:
    """Override the launch mode for every fast_launch kernel, live and future.

    Parameters
    ----------
    mode : {"fast", "triton"} or None
        None re-reads ``LORA_DISPATCH_LAUNCHER``.

    Returns
    -------
    str
        The mode now in force.
    """
    global _mode
    if mode is not None and mode not in _MODES:
        raise ValueError(f"launcher mode must be one of {_MODES}, not {mode!r}")
    _mode = mode
    current = launcher_mode()
    for launcher in list(_live):
        launcher._fl_set_plain(current == "triton")
    return current


def lean_launch_enabled() -> bool:
    """Whether new launchers call the C launch entry directly (Triton 3.5 / 3.6, CUDA).

    ``LORA_DISPATCH_LEAN=1`` / ``0`` forces it; unset, it is on for Triton 3.6 (the release
    it was verified on, bit for bit against plain launches on an H200) and off otherwise.
    See :func:`set_lean_launch`.
    """
    global _lean
    if _lean is None:
        value = os.environ.get(_LEAN_ENV, "auto").strip().lower()
        if value in ("", "auto"):
            try:
                _lean = get_adapter().version == (3, 6)
            except Exception:
                _lean = False
        else:
            _lean = value not in ("0", "false", "no", "off")
    return _lean


def set_lean_launch(enabled: bool | None) -> bool:
    """Turn the lean launch path on / off (None: re-read ``LORA_DISPATCH_LEAN``).

    Live launchers are rebuilt on their next launch (their stored variants are dropped;
    Triton's own cache keeps the compiled kernels).

    Returns
    -------
    bool
        The setting now in force.
    """
    global _lean
    _lean = enabled
    current = lean_launch_enabled()
    for launcher in list(_live):
        launcher._fl_reset()
    return current


def set_native_launch(enabled: bool | None) -> bool:
    """Turn the native tier (C key + ``cuLaunchKernelEx``, see :mod:`.native`) on / off
    (None: re-read ``LORA_DISPATCH_NATIVE``); live launchers are rebuilt on their next launch.

    Returns
    -------
    bool
        The setting now in force.
    """
    current = _native.set_native_launch(enabled)
    for launcher in list(_live):
        launcher._fl_reset()
    return current


def native_launch_enabled() -> bool:
    """Whether new launchers take the native tier (see :func:`set_native_launch`)."""
    return _native.native_launch_enabled()


def _is_plain_jit(obj: Any) -> bool:
    try:
        from triton.runtime.jit import JITFunction
    except Exception:  # pragma: no cover - no triton
        return False
    return isinstance(obj, JITFunction)


class FastLauncher:
    """Wraps one ``@triton.jit`` function; ``launcher[grid](...)`` launches it.

    Attribute access falls through to the wrapped object (``.fn``, ``.__name__``,
    ``.run``, ``.warmup`` ...).

    Parameters
    ----------
    jit : JITFunction, Autotuner, Heuristics or InterpretedFunction
        What ``@triton.jit`` (possibly under ``triton.autotune`` / ``triton.heuristics``)
        produced. Anything but a plain JITFunction is launched through its own path.
    """

    def __init__(self, jit: Any, pdl: str | None = None) -> None:
        self._fl_jit = jit
        self._fl_pdl: int | None = None  # index of the constexpr that turns PDL on
        if pdl is not None:
            sig = getattr(jit, "signature", None)
            params = getattr(jit, "arg_names", None) or (list(sig.parameters) if sig else [])
            if pdl not in params:
                raise ValueError(f"pdl must name a parameter of the kernel, got {pdl!r}")
            self._fl_pdl = list(params).index(pdl)
        self._fl_lock = threading.RLock()
        self._fl_caches: dict[int, dict] = {}
        self._fl_hits = itertools.count()
        self._fl_misses = 0
        self._fl_fallbacks = 0
        self._fl_reason: str | None = None
        self._fl_source: str | None = None
        self._fl_ns: dict[str, Any] | None = None
        self._fl_adapter: Adapter | None = None
        self._fl_force_plain = launcher_mode() == "triton"
        self._fl_launch = self._fl_bootstrap
        self._fl_groups: weakref.WeakSet = weakref.WeakSet()  # LaunchGroups holding this
        self._fl_opt_cut: int | None = None  # first parameter named like a launch option
        self.__doc__ = getattr(jit, "__doc__", None)
        self.__module__ = getattr(jit, "__module__", __name__)
        self.__wrapped__ = jit
        if os.environ.get("TRITON_INTERPRET", "0") == "1" or type(jit).__name__ == (
            "InterpretedFunction"
        ):
            self._fl_reason = "TRITON_INTERPRET=1: the interpreter launches the kernel"
            logger.debug("fast_launch(%s): %s", _name(jit), self._fl_reason)
        elif not _is_plain_jit(jit):
            self._fl_reason = (
                f"{type(jit).__name__} (autotune / heuristics) is launched through its own path"
            )
            logger.debug("fast_launch(%s): %s", _name(jit), self._fl_reason)
        self._fl_plain = self._fl_force_plain or self._fl_reason is not None
        _live.add(self)

    # ---------------------------------------------------------------- launching
    def __getitem__(self, grid: Any):
        if self._fl_plain:
            return self._fl_jit[grid]
        return partial(self._fl_launch, grid)

    def _fl_set_plain(self, plain: bool) -> None:
        self._fl_force_plain = plain
        self._fl_plain = plain or self._fl_reason is not None
        self._fl_changed()

    def _fl_changed(self) -> None:
        """Tell the launch groups holding this launcher that its tier / tables changed."""
        for group in list(self._fl_groups):
            group._invalidate()

    def _fl_clear_native(self) -> None:
        if self._fl_ns is not None and "_fl_nat" in self._fl_ns:
            _native.load().fl_clear(self._fl_ns["_fl_nat"])

    def _fl_reset(self) -> None:
        with self._fl_lock:
            if self._fl_reason is None and self._fl_ns is not None:
                self._fl_clear_native()
                self._fl_ns = None
                self._fl_source = None
                self._fl_launch = self._fl_bootstrap
                for cache in self._fl_caches.values():
                    cache.clear()
            self._fl_changed()

    def _fl_bootstrap(self, grid: Any, *args: Any, **kwargs: Any) -> Any:
        with self._fl_lock:
            if self._fl_launch == self._fl_bootstrap and self._fl_reason is None:
                try:
                    self._fl_build()
                except Exception as exc:  # unexpected internals: plain Triton, one log line
                    self._fl_reason = f"{type(exc).__name__}: {exc}"
                    _log_once(self._fl_reason)
                    self._fl_plain = True
                    self._fl_changed()
        if self._fl_reason is not None:
            return self._fl_jit[grid](*args, **kwargs)
        return self._fl_launch(grid, *args, **kwargs)

    def _fl_build(self, backend: Any = None, device_setup: bool = True) -> None:
        """Generate and compile the launch function for the installed Triton."""
        adapter = get_adapter()
        is_cuda = True
        if backend is None:
            backend, is_cuda = _current_backend(self._fl_jit, adapter)
        dev_ns = _device_namespace() if device_setup else {"single": True}
        source, ns = build_source(self._fl_jit, adapter, backend, inline=is_cuda,
                                  single_device=dev_ns["single"],
                                  lean=is_cuda and lean_launch_enabled(),
                                  native=is_cuda and _native.native_launch_enabled())
        ns.update({k: v for k, v in dev_ns.items() if k != "single"})
        self._fl_exec(source, ns, single_device=dev_ns["single"])
        self._fl_adapter = adapter
        self._fl_source = source
        self._fl_ns = ns
        self._fl_state0 = ns["_fl_state"]()
        self._fl_launch = ns["_fl_launch"]
        self._fl_changed()

    def _fl_exec(self, source: str, ns: dict, single_device: bool) -> None:
        """Bind this launcher's cache and callbacks into ``ns`` and execute ``source`` there."""
        if single_device:
            ns["_fl_cache"] = self._fl_caches.setdefault(0, {})
        ns["_fl_caches"] = self._fl_caches
        ns["_fl_EMPTY"] = {}
        ns["_fl_hit"] = self._fl_hits.__next__
        ns["_fl_miss"] = self._fl_on_miss
        ns["_fl_plain"] = self._fl_on_plain
        ns["_fl_check_globals"] = partial(_check_globals, self._fl_jit)
        exec(compile(source, f"<fast_launch {_name(self._fl_jit)}>", "exec"), ns)

    def _fl_run(self, grid: Any, args: tuple, kwargs: dict) -> Any:
        """``JITFunction.run`` on the call's parameters. Parameters named like a launch
        option (Gluon's ``num_warps: gl.constexpr``) and those after them go by keyword:
        Triton reads launch options from the keywords only, so a positional ``num_warps``
        would bind the parameter but compile with the default option."""
        cut = self._fl_opt_cut
        if cut is None:
            names = list(self._fl_jit.signature.parameters)
            cut = self._fl_opt_cut = next(
                (i for i, n in enumerate(names) if n in OPTION_KEYWORDS), len(names))
        if cut < len(args):
            names = list(self._fl_jit.signature.parameters)
            kwargs = {**dict(zip(names[cut:], args[cut:])), **kwargs}
            args = args[:cut]
        return self._fl_jit.run(*args, grid=grid, warmup=False, **kwargs)

    def _fl_on_plain(self, grid: Any, args: tuple, kwargs: dict) -> Any:
        self._fl_fallbacks += 1
        return self._fl_run(grid, args, kwargs)

    def _fl_on_miss(self, grid: Any, key: tuple, dev: int, args: tuple, kwargs: dict) -> Any:
        jit = self._fl_jit
        with self._fl_lock:
            kernel = self._fl_run(grid, args, kwargs)
            self._fl_misses += 1
            if kernel is None or hasattr(kernel, "result"):  # skipped by a hook / async compile
                return kernel
            if self._fl_ns is None or self._fl_ns["_fl_state"]() != self._fl_state0:
                return kernel
            try:
                entry = self._fl_ns["_fl_entry"](kernel)
            except Exception as exc:
                _log_once(f"cannot take the launcher of {_name(jit)}: {type(exc).__name__}: {exc}")
                return kernel
            self._fl_caches.setdefault(dev, {})[key] = entry
            if "_fl_nat" in self._fl_ns:
                try:
                    _native.register(self._fl_ns, kernel, dev, args, kwargs,
                                     list(self._fl_jit.signature.parameters),
                                     self._fl_adapter.scratch_params,
                                     pdl=self._fl_pdl is not None and bool(args[self._fl_pdl]))
                except Exception as exc:
                    _log_once(f"native tier cannot store a variant of {_name(jit)}: "
                              f"{type(exc).__name__}: {exc}")
        return kernel

    # ---------------------------------------------------------------- introspection
    def key(self, *args: Any, **kwargs: Any) -> tuple:
        """The fast-launch key for a call (what the cache is indexed by); for tests.

        Parameters
        ----------
        *args, **kwargs
            As for ``launcher[grid](...)``.

        Returns
        -------
        tuple
        """
        if self._fl_ns is None:
            raise RuntimeError("launcher not built yet; call build_for_tests() or launch once")
        return self._fl_ns["_fl_key"](*args, **kwargs)

    def native_key(self, *args: Any, **kwargs: Any) -> bytes | None:
        """The native tier's key for a call (None: the call takes the Python path); tests.

        Parameters
        ----------
        *args, **kwargs
            As for ``launcher[grid](...)``, launch options included.

        Returns
        -------
        bytes or None
        """
        if self._fl_ns is None or "_fl_nat" not in self._fl_ns:
            raise RuntimeError("no native tier (build_for_tests(native=True) or launch once)")
        from .codegen import NOT_SET

        ns = self._fl_ns
        params = self._fl_jit.signature.parameters
        if set(kwargs) - set(params) - set(ns["_fl_nat_slots"]):
            return None
        bound = self._fl_jit.signature.bind(*args, **{k: v for k, v in kwargs.items()
                                                      if k in params})
        bound.apply_defaults()
        slots = tuple(bound.arguments.values()) + tuple(
            kwargs.get(o, NOT_SET) for o in ns["_fl_nat_slots"])
        return ns["_fl_natkey"](ns["_fl_nat"], 0, *slots)

    def build_for_tests(self, backend: Any, lean: bool = False,
                        native: bool = False) -> FastLauncher:
        """Generate the launcher without a GPU, specialising with ``backend`` (tests only).

        Parameters
        ----------
        backend : object
            A Triton backend object (see :func:`.versions.reference_backend`).
        lean : bool
            Generate the lean launch call (see :func:`set_lean_launch`).
        native : bool
            Generate the native tier too (needs Triton 3.5 / 3.6 and a C compiler).

        Returns
        -------
        FastLauncher
            ``self``.
        """
        inline = "HIP" not in type(backend).__name__ and "HIP" not in getattr(
            backend, "__name__", ""
        )
        adapter = get_adapter()
        source, ns = build_source(self._fl_jit, adapter, backend, inline=inline,
                                  single_device=True, lean=lean, native=native)
        ns.update(_cpu_device_namespace())
        self._fl_exec(source, ns, single_device=True)
        self._fl_adapter, self._fl_source, self._fl_ns = adapter, source, ns
        self._fl_state0 = ns["_fl_state"]()
        self._fl_launch = ns["_fl_launch"]
        self._fl_changed()
        return self

    @property
    def launcher_source(self) -> str:
        """Source of the generated launch / key functions (generated on demand)."""
        if self._fl_source is not None:
            return self._fl_source
        if self._fl_reason is not None:
            return f"# fast path disabled: {self._fl_reason}\n"
        from .versions import reference_backend

        source, _ = build_source(self._fl_jit, get_adapter(), reference_backend("cuda"),
                                 inline=True, single_device=True)
        return source

    @property
    def fast_path_reason(self) -> str | None:
        """Why launches take Triton's own path (None when the fast path is active)."""
        if self._fl_force_plain:
            return f"{_ENV_VAR}=triton"
        return self._fl_reason

    def cache_info(self) -> CacheInfo:
        """Hits, misses, stored variants and plain-path fallbacks of this launcher.

        Returns
        -------
        CacheInfo
            ``path`` is ``"fast"``, ``"triton"`` (mode override) or ``"delegate"``.
        """
        hits = int(repr(self._fl_hits)[6:-1])  # 'count(N)': next value == calls so far
        ns = self._fl_ns
        if ns is not None and "_fl_nat" in ns:
            hits += _native.load().fl_info(ns["_fl_nat"])[0]
        variants = sum(len(c) for c in list(self._fl_caches.values()))
        path = "triton" if self._fl_force_plain else "delegate" if self._fl_reason else "fast"
        return CacheInfo(hits, self._fl_misses, variants, self._fl_fallbacks, path)

    @property
    def launch_tier(self) -> str:
        """How hits are launched: ``"native"`` (C key + ``cuLaunchKernelEx``), ``"lean"``
        (Python key, Triton's C launch entry), ``"python"`` (Python key, compiled kernel's
        ``run``), ``"triton"`` (mode override), ``"delegate"`` (Triton's own path) or
        ``"unbuilt"`` (before the first launch)."""
        if self._fl_force_plain:
            return "triton"
        if self._fl_reason is not None:
            return "delegate"
        if self._fl_ns is None:
            return "unbuilt"
        return self._fl_ns["_fl_tier"]

    def cache_clear(self) -> None:
        """Forget stored variants (Triton's own cache is untouched)."""
        with self._fl_lock:
            self._fl_clear_native()
            for cache in self._fl_caches.values():
                cache.clear()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_fl_"):
            raise AttributeError(name)
        return getattr(self._fl_jit, name)

    def __repr__(self) -> str:
        return f"fast_launch({self._fl_jit!r})"


def _name(jit: Any) -> str:
    fn = getattr(jit, "fn", None)
    return getattr(fn, "__qualname__", None) or getattr(jit, "__name__", repr(jit))


_MISSING = object()


def _check_globals(jit: Any) -> None:
    """Triton's "global variable changed" check; the same object is unchanged, without
    comparing (a ``constexpr`` global's ``!=`` builds a new constexpr: ~1 µs a call)."""
    for (name, _), (val, globals_dict) in jit.used_global_vals.items():
        new = globals_dict.get(name, _MISSING)
        if new is not val and new != val:
            raise RuntimeError(
                f"Global variable {name} has changed since we compiled this kernel, "
                f"from {val} to {new}"
            )


def _current_backend(jit: Any, adapter: Adapter) -> tuple[Any, bool]:
    from triton.compiler.compiler import make_backend
    from triton.runtime import driver

    target = driver.active.get_current_target()
    backend = None
    if adapter.version >= (3, 3):
        device = driver.active.get_current_device()
        entry = jit.device_caches[device]
        backend = entry[-2]
    if backend is None or not hasattr(backend, "parse_options"):
        backend = make_backend(target)
    return backend, target.backend == "cuda"


def _device_namespace() -> dict[str, Any]:
    from triton.runtime import driver

    drv = driver.active
    get_device = drv.get_current_device
    get_stream = drv.get_current_stream
    single = False
    try:
        import torch

        if get_device is torch.cuda.current_device and hasattr(torch._C, "_cuda_getDevice"):
            get_device = torch._C._cuda_getDevice
        single = torch.cuda.device_count() == 1
    except Exception:  # pragma: no cover - torch-free drivers
        pass
    return {"single": single, "_fl_getdev": get_device, "_fl_stream": get_stream}


def _cpu_device_namespace() -> dict[str, Any]:
    return {"_fl_getdev": lambda: 0, "_fl_stream": lambda dev: 0}


def fast_launch(jit: Any = None, *, pdl: str | None = None) -> Any:
    """Decorate a ``@triton.jit`` function with the fast launcher.

    Parameters
    ----------
    jit : JITFunction (or Autotuner / Heuristics / InterpretedFunction)
        Put ``@fast_launch`` above ``@triton.jit`` (and above ``triton.autotune`` /
        ``triton.heuristics`` if used; those keep their own launch path).
    pdl : str, optional
        ``@fast_launch(pdl="NAME")``: a constexpr parameter; variants where it is true are
        launched by the native tier with programmatic dependent launch (CUDA's programmatic
        stream serialization: the kernel may start before the previous kernel on the stream
        ends, so it must call ``griddepcontrol.wait`` before reading what that kernel
        writes). Other tiers launch those variants as usual, where the wait is a no-op.

    Returns
    -------
    FastLauncher
        ``launcher[grid](*args, **options)`` has the semantics of ``jit[grid](...)``.
    """
    if jit is None:
        return lambda j: fast_launch(j, pdl=pdl)
    if isinstance(jit, FastLauncher):
        return jit
    if not hasattr(jit, "__getitem__"):
        raise TypeError(f"fast_launch expects a @triton.jit function, got {type(jit).__name__}")
    return FastLauncher(jit, pdl=pdl)

