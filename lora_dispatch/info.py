"""``lora_dispatch.info()``: what runs here and why."""

from __future__ import annotations

import os
from typing import Any

import torch

from .devices import info as _info
from .devices import registry as _registry


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _launcher_mode() -> str:
    try:
        from .launchers import launcher_mode
    except ImportError:
        return "triton"
    try:
        return str(launcher_mode())
    except Exception:  # pragma: no cover - defensive
        return "unknown"


def info(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16
) -> dict[str, Any]:
    """Describe the platform, device, selected backend and versions.

    Parameters
    ----------
    device : optional
        Device to describe (default: the first GPU, else the CPU).
    dtype : torch.dtype
        Dtype used for the backend selection shown.

    Returns
    -------
    dict
        ``platform``, ``device``, ``device_name``, ``arch``, ``compute_units``, ``warp_size``,
        ``backend``, ``backend_reason``, ``backends`` (every registered backend and whether it
        can run here), ``torch``, ``triton``, ``launcher``, ``env``.
    """
    d = _info.current(device)
    try:
        sel = _registry.select(d, dtype)
        backend, reason = sel.name, sel.reason
    except (RuntimeError, ValueError) as exc:
        backend, reason = None, str(exc)
    table = {}
    for b in _registry.backends():
        why = b.unsupported(d, dtype, forced=True)
        auto = b.unsupported(d, dtype)
        table[b.name] = {
            "priority": b.priority,
            "runs_here": why is None,
            "automatic": auto is None,
            "why_not": why or auto,
            "description": b.description,
        }
    return {
        "platform": d.platform,
        "device": str(d.device),
        "device_name": d.name,
        "arch": d.arch,
        "compute_units": d.compute_units,
        "warp_size": d.warp_size,
        "backend": backend,
        "backend_reason": reason,
        "backends": table,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "launcher": _launcher_mode(),
        "env": {
            k: v for k, v in sorted(os.environ.items())
            if k.startswith("LORA_DISPATCH_") or k == "TRITON_INTERPRET"
        },
    }
