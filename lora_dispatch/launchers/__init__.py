"""Fast launch path for ``@triton.jit`` kernels.

>>> from lora_dispatch.launchers import fast_launch
>>> @fast_launch
... @triton.jit
... def kernel(x_ptr, n, BLOCK: tl.constexpr): ...
>>> kernel[grid](x, n, BLOCK=256, num_warps=4)  # same semantics as JITFunction[grid]

See ``docs/launcher.md``. This sub-package imports neither torch nor triton at import time
and nothing from the rest of :mod:`lora_dispatch`.
"""

from .fast import (
    CacheInfo,
    FastLauncher,
    UnsupportedTriton,
    fast_launch,
    launcher_mode,
    lean_launch_enabled,
    native_launch_enabled,
    set_launcher_mode,
    set_lean_launch,
    set_native_launch,
)
from .group import LaunchGroup
from .versions import SUPPORTED, get_adapter

__all__ = [
    "SUPPORTED",
    "CacheInfo",
    "FastLauncher",
    "LaunchGroup",
    "UnsupportedTriton",
    "fast_launch",
    "get_adapter",
    "launcher_mode",
    "lean_launch_enabled",
    "native_launch_enabled",
    "set_launcher_mode",
    "set_lean_launch",
    "set_native_launch",
]
