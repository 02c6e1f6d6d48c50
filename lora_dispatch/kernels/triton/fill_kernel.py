"""Zero fill of a float32 buffer: the public ``lora_shrink``'s output before its split-K
atomics, issued in the same launch group as the shrink (one native call for both).

``PDL``: the shrink after it may start at once (programmatic dependent launch, Hopper): it
runs its loads and products beside the fill and waits for it before its first store."""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch
from .tiles import pdl_launch_dependents

__all__ = ["zero_kernel", "ZERO_BLOCK"]

ZERO_BLOCK = 1024


@fast_launch
@triton.jit
def zero_kernel(y_ptr, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        pdl_launch_dependents()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    tl.store(y_ptr + offs, tl.zeros((BLOCK,), dtype=tl.float32), mask=offs < N)
