"""Backend registry: which implementation runs on which device, and the selection rules.

Each backend registers a :class:`Backend` (validated on creation) naming the platforms and
dtypes it supports, its shape limits, a priority and an availability check. Selection:

- ``LORA_DISPATCH_BACKEND=<name>`` forces a backend; if it cannot run on the device the
  call fails with :class:`BackendUnavailableError` saying why.
- Otherwise the highest-priority backend that supports the platform, dtype and shape and
  passes its check is chosen; each skipped backend is logged once (``logging``, logger
  ``lora_dispatch``) with the reason.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch

from .info import PLATFORMS, DeviceInfo

ENV_BACKEND = "LORA_DISPATCH_BACKEND"
logger = logging.getLogger("lora_dispatch")

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "ENV_BACKEND",
    "Selection",
    "backends",
    "get",
    "register",
    "reset",
    "select",
]


class BackendUnavailableError(RuntimeError):
    """A backend forced through ``LORA_DISPATCH_BACKEND`` cannot run here."""


_ALL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})


@dataclass(frozen=True)
class Backend:
    """One kernel implementation and what it supports.

    Attributes
    ----------
    name : str
        Lower-case identifier (the value of ``LORA_DISPATCH_BACKEND``).
    module : str
        Import path of the implementation (exports ``shrink``, ``expand``, ``add_lora``).
    platforms : frozenset of str
        Subset of ``cuda``, ``rocm``, ``xla``, ``cpu`` where automatic selection may pick it.
    forced_platforms : frozenset of str
        Further platforms where it runs only when forced (e.g. Triton's CPU interpreter).
    priority : int
        Higher wins in automatic selection.
    dtypes : frozenset of torch.dtype
    max_rank, max_slices : int or None
        Shape limits (``None`` = unlimited).
    check : callable(DeviceInfo) -> str or None
        Returns why the backend cannot run on this device, or ``None`` if it can.
    description : str
    """

    name: str
    module: str
    platforms: frozenset[str]
    priority: int
    forced_platforms: frozenset[str] = frozenset()
    dtypes: frozenset[torch.dtype] = _ALL_DTYPES
    max_rank: int | None = None
    max_slices: int | None = None
    check: Callable[[DeviceInfo], str | None] = field(default=lambda info: None, compare=False)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier() or self.name.lower() != self.name:
            raise ValueError(f"backend name must be a lower-case identifier, got {self.name!r}")
        object.__setattr__(self, "platforms", frozenset(self.platforms))
        object.__setattr__(self, "dtypes", frozenset(self.dtypes))
        object.__setattr__(self, "forced_platforms", frozenset(self.forced_platforms))
        bad = (self.platforms | self.forced_platforms) - set(PLATFORMS)
        if not self.platforms or bad:
            raise ValueError(
                f"backend {self.name!r}: platforms must be a non-empty subset of {PLATFORMS}, "
                f"got {sorted(self.platforms)}"
            )
        if not self.dtypes or not self.dtypes <= _ALL_DTYPES:
            raise ValueError(
                f"backend {self.name!r}: dtypes must be a non-empty subset of "
                f"{sorted(map(str, _ALL_DTYPES))}"
            )
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise TypeError(f"backend {self.name!r}: priority must be an int")
        for lim in ("max_rank", "max_slices"):
            v = getattr(self, lim)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"backend {self.name!r}: {lim} must be a positive int or None")

    def unsupported(
        self,
        info: DeviceInfo,
        dtype: torch.dtype | None = None,
        max_rank: int | None = None,
        num_slices: int | None = None,
        forced: bool = False,
    ) -> str | None:
        """Why this backend cannot serve the request, or ``None`` if it can."""
        allowed = self.platforms | self.forced_platforms if forced else self.platforms
        if info.platform not in allowed:
            return f"platform {info.platform!r} not in {sorted(allowed)}"
        if dtype is not None and dtype not in self.dtypes:
            return f"dtype {dtype} not supported"
        if max_rank is not None and self.max_rank is not None and max_rank > self.max_rank:
            return f"max_rank {max_rank} > {self.max_rank}"
        if num_slices is not None and self.max_slices is not None and num_slices > self.max_slices:
            return f"{num_slices} slices > {self.max_slices}"
        try:
            return self.check(info)
        except Exception as exc:  # a broken check means the backend is unusable
            return f"availability check failed: {exc!r}"

    def load(self) -> ModuleType:
        """Import and return the implementation module."""
        return importlib.import_module(self.module)


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select`: the backend, its implementation and why it was chosen."""

    backend: Backend
    impl: ModuleType
    forced: bool
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def reason(self) -> str:
        if self.forced:
            return f"forced by {ENV_BACKEND}={self.backend.name}"
        if not self.skipped:
            return f"highest-priority backend for this device ({self.backend.name})"
        why = "; ".join(f"{n}: {r}" for n, r in self.skipped)
        return f"{self.backend.name} (skipped {why})"


_REGISTRY: dict[str, Backend] = {}
_lock = threading.Lock()
_logged: set[tuple[str, str, str]] = set()
#: Incremented by :func:`reset`; objects caching a selection compare against it.
generation = 0


def register(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` to the registry."""
    if not isinstance(backend, Backend):
        raise TypeError(f"expected a Backend, got {type(backend).__name__}")
    with _lock:
        if backend.name in _REGISTRY and not replace:
            raise ValueError(f"backend {backend.name!r} is already registered")
        _REGISTRY[backend.name] = backend
    reset()
    return backend


def backends() -> tuple[Backend, ...]:
    """Registered backends, highest priority first."""
    return tuple(sorted(_REGISTRY.values(), key=lambda b: -b.priority))


def get(name: str) -> Backend:
    """The registered backend called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; registered: {sorted(_REGISTRY)}") from None


def reset() -> None:
    """Forget cached selections (call after changing ``LORA_DISPATCH_BACKEND`` at run time)."""
    global generation
    generation += 1


def _forced_name() -> str | None:
    value = os.environ.get(ENV_BACKEND, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in _REGISTRY:
        raise ValueError(
            f"{ENV_BACKEND}={value!r} is not a backend; "
            f"expected one of {sorted(_REGISTRY)} or 'auto'"
        )
    return value


def select(
    info: DeviceInfo,
    dtype: torch.dtype | None = None,
    max_rank: int | None = None,
    num_slices: int | None = None,
) -> Selection:
    """Choose the backend for ``info`` (and optionally a dtype and shape).

    Raises
    ------
    ValueError
        ``LORA_DISPATCH_BACKEND`` names no registered backend.
    BackendUnavailableError
        The forced backend cannot run here, or no backend can.
    """
    forced = _forced_name()
    if forced is not None:
        b = _REGISTRY[forced]
        why = b.unsupported(info, dtype, max_rank, num_slices, forced=True)
        if why is None:
            try:
                return Selection(b, b.load(), forced=True)
            except ImportError as exc:
                why = f"import failed: {exc}"
        raise BackendUnavailableError(
            f"{ENV_BACKEND}={forced} cannot run on {info.platform} device {info.name!r}: {why}"
        )
    skipped: list[tuple[str, str]] = []
    for b in backends():
        why = b.unsupported(info, dtype, max_rank, num_slices)
        if why is None:
            try:
                impl = b.load()
            except ImportError as exc:
                why = f"import failed: {exc}"
            else:
                sel = Selection(b, impl, forced=False, skipped=tuple(skipped))
                _log_fallback(info, sel)
                return sel
        if info.platform in b.platforms:
            skipped.append((b.name, why))
    raise BackendUnavailableError(
        f"no backend can run on {info.platform} device {info.name!r} (dtype={dtype}): "
        + "; ".join(f"{n}: {r}" for n, r in skipped)
    )


def _log_fallback(info: DeviceInfo, sel: Selection) -> None:
    for name, why in sel.skipped:
        key = (info.platform, name, why)
        if key in _logged:
            continue
        _logged.add(key)
        logger.warning(
            "lora_dispatch: backend %r unavailable on %s (%s): %s; using %r",
            name,
            info.platform,
            info.name,
            why,
            sel.name,
        )
