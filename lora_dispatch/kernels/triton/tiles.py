"""Device helpers shared by the kernels: a program's token tile and its output column block."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["tile_head", "tile_rows", "slice_block", "pdl_wait", "pdl_launch_dependents",
           "flag_wait", "flag_arrive"]


@triton.jit
def tile_head(tile, ranks_ptr, L, NT):
    """Slot, its rank (0 for slot -1, an unknown slot or an empty slot), first and end row
    in ``sorted_tokens`` of the tile at ``tile`` in ``tile_map``.

    The three ``tile_map`` loads are independent and the rank load needs only the slot, so
    a program waits two memory round trips here, not four (then :func:`tile_rows`, issued
    beside the rank load).
    """
    slot = tl.load(tile)
    start = tl.load(tile + NT)
    end = tl.load(tile + 2 * NT)
    ok = (slot >= 0) & (slot < L)
    rank = tl.load(ranks_ptr + slot, mask=ok, other=0)
    return slot, rank, start, end


@triton.jit
def tile_rows(start, end, tok_ptr, T, BM: tl.constexpr):
    """Row mask ``[BM]`` and int64 token ids ``[BM]`` of rows ``start ... end`` of
    ``sorted_tokens``.

    Rows past the tile's end or holding a token id outside ``[0, T)`` are masked; their ids
    read as 0 so addresses stay in bounds.
    """
    offs_m = start + tl.arange(0, BM)  # [BM]
    tok = tl.load(tok_ptr + offs_m, mask=offs_m < end, other=T)  # [BM]
    m_mask = (tok >= 0) & (tok < T)  # [BM]
    return m_mask, tl.where(m_mask, tok, 0).to(tl.int64)


@triton.jit
def slice_block(bounds_ptr, pid_n, S: tl.constexpr, BN: tl.constexpr, ALIGN: tl.constexpr):
    """Slice index, first column and end column of column block ``pid_n``.

    ``ALIGN`` divides every slice offset and width (known on the host), so the output
    accesses stay vectorized even though the bounds are loaded.
    """
    sl = pid_n * 0
    c0 = pid_n * 0
    c1 = pid_n * 0
    first = pid_n * 0
    for i in tl.static_range(S):
        lo = tl.load(bounds_ptr + i)
        hi = tl.load(bounds_ptr + i + 1)
        nb = (hi - lo + BN - 1) // BN
        hit = (pid_n >= first) & (pid_n < first + nb)
        sl = tl.where(hit, i, sl)
        c0 = tl.where(hit, lo + (pid_n - first) * BN, c0)
        c1 = tl.where(hit, hi, c1)
        first += nb
    c0 = tl.multiple_of(c0, ALIGN)
    c1 = tl.multiple_of(c1, ALIGN)
    return sl, c0, c1


@triton.jit
def pdl_wait():
    """``griddepcontrol.wait`` (sm_90+): block until the kernels this one depends on have
    finished and their writes are visible; a no-op without programmatic dependent launch."""
    tl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def pdl_launch_dependents():
    """``griddepcontrol.launch_dependents`` (sm_90+): a dependent kernel launched with
    programmatic dependent launch may start once every program has run this or ended."""
    tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def flag_arrive(flag_ptr):
    """Count this program in at ``flag_ptr`` once all its threads' stores are done: a CTA
    barrier, then one release increment at GPU scope (cumulative over the barrier)."""
    tl.debug_barrier()
    tl.atomic_add(flag_ptr, 1, sem="release")


@triton.jit
def flag_wait(flag_ptr, need):
    """Spin until the counter at ``flag_ptr`` reaches ``need`` (acquire reads: what the
    counted programs stored before :func:`flag_arrive` is visible after it)."""
    cnt = tl.atomic_add(flag_ptr, 0, sem="acquire")
    while cnt < need:
        cnt = tl.atomic_add(flag_ptr, 0, sem="acquire")
