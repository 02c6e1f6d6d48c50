"""Zero fill of a float32 buffer: the public ``lora_shrink``'s output before its split-K
atomics, issued in the same launch group as the shrink (one native call for both)."""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch

__all__ = ["zero_kernel", "ZERO_BLOCK"]

ZERO_BLOCK = 1024


@fast_launch
@triton.jit
def zero_kernel(y_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    tl.store(y_ptr + offs, tl.zeros((BLOCK,), dtype=tl.float32), mask=offs < N)
