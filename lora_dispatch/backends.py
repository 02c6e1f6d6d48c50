"""The built-in backends and the platforms they serve (declarative support table)."""

from __future__ import annotations

import os

from .devices.info import PLATFORMS, DeviceInfo
from .devices.registry import Backend, register


def _triton_check(info: DeviceInfo) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if info.platform == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the CPU runs Triton kernels only under TRITON_INTERPRET=1"
    return None


def _xla_check(info: DeviceInfo) -> str | None:
    if info.platform == "xla":
        try:
            import torch_xla  # noqa: F401
        except ImportError:
            return "torch_xla is not installed"
    return None


REFERENCE = register(
    Backend(
        name="reference",
        module="lora_dispatch.kernels.reference",
        platforms=frozenset(PLATFORMS),
        priority=0,
        description="vectorized PyTorch, float32 accumulation; the CPU path and the fallback",
    )
)
TRITON = register(
    Backend(
        name="triton",
        module="lora_dispatch.kernels.triton",
        platforms=frozenset({"cuda", "rocm"}),
        forced_platforms=frozenset({"cpu"}),
        priority=100,
        check=_triton_check,
        description="segmented-GEMM Triton kernels (CUDA, ROCm; CPU under TRITON_INTERPRET=1)",
    )
)
XLA = register(
    Backend(
        name="xla",
        module="lora_dispatch.kernels.xla",
        platforms=frozenset({"xla"}),
        forced_platforms=frozenset({"cpu"}),
        priority=50,
        check=_xla_check,
        description="static-shape PyTorch formulation for XLA (TPU); one graph per token count",
    )
)
