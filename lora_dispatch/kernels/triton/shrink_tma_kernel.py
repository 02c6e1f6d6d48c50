"""Segmented shrink with tensor-memory-accelerator (TMA) loads, for prefill.

Same work split, outputs and epilogue as :mod:`.shrink_kernel` (grid ``(NB * tiles,
SPLIT_K)``, ``RB`` (slice, block) pairs per program, blocks never straddle slices). ``A`` is
read through a host tensor descriptor over the packed weights viewed as ``[L * S * R, K]``
(tile ``[BN, BK]``). A token tile whose tokens are consecutive (a prefill segment: the batch
sorts tokens stably by slot, so a tile is consecutive iff ``last - first == rows - 1``) reads
``x`` through a descriptor too (tile ``[BM, BK]`` at its first token); any other tile
gathers its ``x`` rows with pointer loads. Rows a descriptor brings in past the tile's end
(the next segment's tokens, or zeros past ``T``) and rank rows past a block's rank only feed
accumulator entries the masked store drops.

The parameters after the two descriptors are :mod:`.shrink_kernel`'s (``a_ptr`` unused), so
both kernels take one argument tuple. Host contract (checked by the launcher): ``K_SPLIT``
is a multiple of ``BK`` (no ``x`` / ``A`` tile crosses a split); ``x`` is 16-byte aligned
with unit column stride and a row stride that is a multiple of 16 bytes.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch
from .shrink_kernel import _blocks, _store_blocks, _zero_blocks
from .tiles import pdl_launch_dependents, tile_head, tile_rows

__all__ = ["shrink_tma_kernel"]


@triton.jit
def _dots(acc0, acc1, acc2, acc3, xb, a_desc, ar0, ar1, ar2, ar3, k, RB: tl.constexpr,
          PREC: tl.constexpr):
    acc0 = tl.dot(xb, a_desc.load([ar0, k]).T, acc0, input_precision=PREC)  # [BM, BN]
    if RB > 1:
        acc1 = tl.dot(xb, a_desc.load([ar1, k]).T, acc1, input_precision=PREC)
    if RB > 2:
        acc2 = tl.dot(xb, a_desc.load([ar2, k]).T, acc2, input_precision=PREC)
    if RB > 3:
        acc3 = tl.dot(xb, a_desc.load([ar3, k]).T, acc3, input_precision=PREC)
    return acc0, acc1, acc2, acc3


@fast_launch
@triton.jit
def shrink_tma_kernel(
    x_desc, a_desc, x_ptr, a_ptr, y_ptr, ranks_ptr, scal_ptr, tok_ptr, tiles_ptr,
    T, K, L, NT, K_SPLIT, NB,
    stride_xm, stride_xk, stride_yp, stride_ys, stride_yt,
    S: tl.constexpr, R: tl.constexpr, RCAP: tl.constexpr, TILE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, RB: tl.constexpr,
    EVEN_K: tl.constexpr, ATOMIC: tl.constexpr, FILL: tl.constexpr, PREC: tl.constexpr,
    PDL: tl.constexpr, RLOW: tl.constexpr, RMID: tl.constexpr,  # 0 here (plans give TMA none)
):
    if PDL == 1:  # the expand after it may start now (it waits before reading y)
        pdl_launch_dependents()
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    pid_k = tl.program_id(1)
    slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
    m_mask, tok64 = tile_rows(start, end, tok_ptr, T, BM)  # [BM], [BM]
    NBR: tl.constexpr = (RCAP + BN - 1) // BN  # no slot's rank passes RCAP
    (sl0, c00, n_mask0, sl1, c01, n_mask1, sl2, c02, n_mask2, sl3, c03, n_mask3,
     live) = _blocks(pid_n, rank, S, NBR, BN, RB)
    if not live:  # no slot, an empty slot, or every block past the rank
        if FILL:
            _zero_blocks(sl0, c00, sl1, c01, sl2, c02, sl3, c03, m_mask, tok64, y_ptr,
                         stride_ys, stride_yt, S, R, BM, BN, RB)
        return
    first = tl.load(tok_ptr + start)
    last = tl.load(tok_ptr + tl.maximum(end - 1, start))
    base = slot * (S * R)
    ar0 = base + sl0 * rank + c00
    ar1 = base + sl1 * rank + c01
    ar2 = base + sl2 * rank + c02
    ar3 = base + sl3 * rank + c03
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    acc2 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    acc3 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    k0 = pid_k * K_SPLIT
    k_end = tl.minimum(k0 + K_SPLIT, K)
    if last - first == end - start - 1:
        for k in range(k0, k_end, BK):
            xb = x_desc.load([first, k])  # [BM, BK]
            acc0, acc1, acc2, acc3 = _dots(acc0, acc1, acc2, acc3, xb, a_desc,
                                           ar0, ar1, ar2, ar3, k, RB, PREC)
    else:
        offs_k = k0 + tl.arange(0, BK)  # [BK]
        x_ptrs = x_ptr + tok64[:, None] * stride_xm + offs_k[None, :] * stride_xk  # [BM, BK]
        for k in range(k0, k_end, BK):
            if EVEN_K:
                xb = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BK]
            else:
                k_mask = (offs_k + (k - k0)) < k_end  # [BK]
                xb = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            acc0, acc1, acc2, acc3 = _dots(acc0, acc1, acc2, acc3, xb, a_desc,
                                           ar0, ar1, ar2, ar3, k, RB, PREC)
            x_ptrs += BK * stride_xk

    _store_blocks(acc0, acc1, acc2, acc3, sl0, c00, n_mask0, sl1, c01, n_mask1, sl2, c02,
                  n_mask2, sl3, c03, n_mask3, m_mask, tok64, slot, pid_k, scal_ptr, y_ptr,
                  stride_yp, stride_ys, stride_yt, S, R, BN, RB, ATOMIC, FILL)
    if PDL == 2:  # or once this program's work is done (several waves: see launch.py)
        pdl_launch_dependents()
