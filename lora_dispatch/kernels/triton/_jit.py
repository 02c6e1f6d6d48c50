"""The decorator every kernel of this backend is compiled with (fast launcher when present)."""

from __future__ import annotations

try:
    from lora_dispatch.launchers import fast_launch
except ImportError:  # the launcher package is optional

    def fast_launch(fn=None, *, pdl=None):
        return fn if fn is not None else (lambda f: f)


__all__ = ["fast_launch"]
