"""``add_lora`` in one launch whose expand programs overlap the shrink's: per-tile flags.

Grid ``(NTILE * (NBS + NBE),)``. ``NBS`` shrink programs per token tile (rank-block groups
times K splits), ``NBE`` expand programs (column groups). Each program takes a *work id*
from a counter at its start (not its program id): the first ``LAG * NBS`` ids are the
shrink programs of the first ``LAG`` tiles; then every step holds the shrink programs of
tile ``j + LAG`` followed by the expand programs of tile ``j``; the last ids are the expand
programs of the last ``LAG`` tiles. A shrink program writes its K split's partial products
of its rank blocks to ``y [SPLIT, S, T, R]`` (float32) and counts itself in at its tile's
flag; an expand program loads its tile, rank and first ``out`` block, waits until the flag
counts all ``NBS`` shrink programs of the tile, then sums the partials and read-add-writes
``out``. The shrink's ``x`` stream (read only) and the expand's ``out`` stream (read and
write) run side by side instead of one after the other.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch
from .expand_kernel import expand_rows
from .shrink_kernel import _blocks, _store_blocks, accumulate
from .tiles import flag_arrive, slice_block, tile_head, tile_rows

__all__ = ["overlap_kernel", "SYNC_HEAD"]

SYNC_HEAD = 2  # int32 counters before the per-tile flags in ``sync``


@triton.jit
def _work(vid, NTILE, NBS, NBE, LAG):
    """Role (shrink or not), token tile and block of work id ``vid``."""
    step = NBS + NBE
    head = LAG * NBS
    body = (NTILE - LAG) * step
    u = tl.maximum(vid - head, 0)
    j = u // step
    r = u - j * step
    v = tl.maximum(vid - head - body, 0)
    in_head = vid < head
    in_tail = vid >= head + body
    shrink = in_head | ((vid < head + body) & (r < NBS))
    tile = tl.where(in_head, vid // NBS,
                    tl.where(in_tail, NTILE - LAG + v // NBE, tl.where(r < NBS, j + LAG, j)))
    blk = tl.where(in_head, vid % NBS,
                   tl.where(in_tail, v % NBE, tl.where(r < NBS, r, r - NBS)))
    return shrink, tile, blk


@fast_launch
@triton.jit
def overlap_kernel(
    x_ptr, a_ptr, y_ptr, b_ptr, out_ptr, ranks_ptr, scal_ptr, bounds_ptr, tok_ptr, tiles_ptr,
    sync_ptr,
    T, K, L, NT, N, NTILE, NBS, NBE, LAG, K_SPLIT,
    stride_xm, stride_xk, stride_yp, stride_ys, stride_yt, stride_om, stride_on,
    S: tl.constexpr, R: tl.constexpr, TILE: tl.constexpr, BM: tl.constexpr,
    BNS: tl.constexpr, BK: tl.constexpr, RB: tl.constexpr, EVEN_K: tl.constexpr,
    BNE: tl.constexpr, BR: tl.constexpr, NCOL: tl.constexpr, PREFETCH: tl.constexpr,
    ALIGN: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr,
):
    vid = tl.atomic_add(sync_ptr, 1, sem="relaxed")
    shrink, tile, blk = _work(vid, NTILE, NBS, NBE, LAG)
    flag = sync_ptr + 2 + tile
    slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + tile, ranks_ptr, L, NT)
    m_mask, tok64 = tile_rows(start, end, tok_ptr, T, BM)  # [BM], [BM]
    if shrink:
        NBR: tl.constexpr = (R + BNS - 1) // BNS
        pid_k = blk % SPLIT
        (sl0, c00, n_mask0, sl1, c01, n_mask1, sl2, c02, n_mask2, sl3, c03, n_mask3,
         live) = _blocks(blk // SPLIT, rank, S, NBR, BNS, RB)
        if live:
            acc0, acc1, acc2, acc3 = accumulate(
                x_ptr, a_ptr, slot, rank, tok64, m_mask, sl0, c00, n_mask0, sl1, c01,
                n_mask1, sl2, c02, n_mask2, sl3, c03, n_mask3, pid_k * K_SPLIT, K_SPLIT, K,
                stride_xm, stride_xk, S, R, BM, BNS, BK, RB, EVEN_K, PREC)
            _store_blocks(acc0, acc1, acc2, acc3, sl0, c00, n_mask0, sl1, c01, n_mask1, sl2,
                          c02, n_mask2, sl3, c03, n_mask3, m_mask, tok64, slot, pid_k,
                          scal_ptr, y_ptr, stride_yp, stride_ys, stride_yt, S, R, BNS, RB,
                          False, False)
        flag_arrive(flag)
    elif rank > 0:
        sl, c0, c1 = slice_block(bounds_ptr, blk, S, BNE * NCOL, ALIGN)
        expand_rows(y_ptr, b_ptr, out_ptr, slot, rank, sl, c0, c1, m_mask, tok64, N,
                    stride_yp, stride_ys, stride_yt, 1, stride_om, stride_on, flag, NBS, R,
                    R, False, SPLIT, BM, BNE,
                    BR, NCOL, PREFETCH, PREC, 2, False, False)
    done = tl.atomic_add(sync_ptr + 1, 1, sem="acq_rel")
    if done == NTILE * (NBS + NBE) - 1:  # every other program has finished: reset for the next
        for i in range(0, NTILE, 1024):
            offs = i + tl.arange(0, 1024)  # [1024]
            tl.store(sync_ptr + 2 + offs, tl.zeros((1024,), dtype=tl.int32), mask=offs < NTILE)
        tl.store(sync_ptr, 0)
        tl.store(sync_ptr + 1, 0)
