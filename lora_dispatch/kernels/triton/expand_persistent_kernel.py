"""Persistent segmented expand: ``out[t, off_i + n] += y[i, t, :r] @ B_i[s, n, :r]^T``.

Same work as :mod:`.expand_kernel`, cut into *items* of one token tile by ``BN`` columns of
one slice (``NB`` column blocks per tile, fastest), ``ITEMS = NB * tiles`` (the one-shot
kernel's tile bound, from ``T`` and the slot count; same parameters as that kernel). A fixed grid of
programs walks the items with a stride of the grid size and loads the next item's ``out``
tile before it computes and stores the current one, so every program keeps one ``out`` read
in flight behind its dot and store (the one-shot kernel's ``out`` load waits in full before
each tile's add). Items of tiles without a slot, of empty slots and rows past ``T`` load and
store nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch
from .tiles import slice_block, tile_tokens

__all__ = ["expand_persistent_kernel"]


@triton.jit
def _item(item, ITEMS, NB, tiles_ptr, tok_ptr, ranks_ptr, bounds_ptr, T, L, NT,
          S: tl.constexpr, TILE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
          ALIGN: tl.constexpr):
    """Slot, rank (0 for dead items), slice, columns ``[BN]`` + mask, rows ``[BM]`` + mask."""
    live = item < ITEMS
    pid_m = tl.where(live, item // NB, 0)
    tile = tiles_ptr + TILE * 3 * NT + pid_m
    slot = tl.load(tile)
    ok = live & (slot >= 0) & (slot < L)
    slot = tl.where(ok, slot, 0)
    rank = tl.where(ok, tl.load(ranks_ptr + slot), 0)
    sl, c0, c1 = slice_block(bounds_ptr, item % NB, S, BN, ALIGN)
    offs_n = c0 + tl.arange(0, BN)  # [BN]
    m_mask, tok64 = tile_tokens(tile, tok_ptr, T, NT, BM)  # [BM], [BM]
    return slot, rank, sl, offs_n, offs_n < c1, m_mask & (rank > 0), tok64


@triton.jit
def _delta(y_ptr, b_ptr, slot, rank, sl, offs_n, n_mask, m_mask, tok64, N,
           stride_yp, stride_ys, stride_yt, stride_yr,
           R: tl.constexpr, SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
           BR: tl.constexpr, PREC: tl.constexpr):
    """``y[sl, rows, :rank] @ B[slot, cols, :rank]^T`` in float32, ``[BM, BN]``."""
    offs_r = tl.arange(0, BR)  # [BR]
    y_ptrs = y_ptr + sl * stride_ys + tok64[:, None] * stride_yt + offs_r[None, :] * stride_yr
    b_ptrs = (b_ptr + slot.to(tl.int64) * N * R + offs_n[None, :].to(tl.int64) * R
              + offs_r[:, None])  # [BR, BN]
    b_live = n_mask[None, :] & (rank > 0)  # [1, BN]
    acc = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    for r0 in tl.static_range(0, R, BR):
        ym = m_mask[:, None] & ((offs_r + r0) < rank)[None, :]  # [BM, BR]
        yr = tl.load(y_ptrs + r0 * stride_yr, mask=ym, other=0.0).to(tl.float32)  # [BM, BR]
        for p in tl.static_range(1, SPLIT):
            yr += tl.load(y_ptrs + r0 * stride_yr + p * stride_yp, mask=ym,
                          other=0.0).to(tl.float32)
        bb = tl.load(b_ptrs + r0, mask=((offs_r + r0) < R)[:, None] & b_live,
                     other=0.0)  # [BR, BN]
        acc += tl.dot(yr.to(bb.dtype), bb, input_precision=PREC)  # [BM, BN]
    return acc


@fast_launch
@triton.jit
def expand_persistent_kernel(
    y_ptr, b_ptr, out_ptr, ranks_ptr, bounds_ptr, tok_ptr, tiles_ptr,
    T, L, NT, N, NB,
    stride_yp, stride_ys, stride_yt, stride_yr, stride_om, stride_on,
    S: tl.constexpr, R: tl.constexpr, TILE: tl.constexpr, SPLIT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
    ALIGN: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    ITEMS = NB * ((T + BM - 1) // BM + tl.minimum(T, L))
    slot, rank, sl, offs_n, n_mask, m_mask, tok64 = _item(
        pid, ITEMS, NB, tiles_ptr, tok_ptr, ranks_ptr, bounds_ptr, T, L, NT, S, TILE, BM, BN,
        ALIGN)
    o = tl.load(out_ptr + tok64[:, None] * stride_om + offs_n[None, :] * stride_on,
                mask=m_mask[:, None] & n_mask[None, :], other=0.0)  # [BM, BN]
    for item in range(pid, ITEMS, step):
        slot2, rank2, sl2, offs_n2, n_mask2, m_mask2, tok642 = _item(
            item + step, ITEMS, NB, tiles_ptr, tok_ptr, ranks_ptr, bounds_ptr, T, L, NT, S,
            TILE, BM, BN, ALIGN)
        o2 = tl.load(out_ptr + tok642[:, None] * stride_om + offs_n2[None, :] * stride_on,
                     mask=m_mask2[:, None] & n_mask2[None, :], other=0.0)  # [BM, BN]
        acc = _delta(y_ptr, b_ptr, slot, rank, sl, offs_n, n_mask, m_mask, tok64, N,
                     stride_yp, stride_ys, stride_yt, stride_yr, R, SPLIT, BM, BN, BR, PREC)
        tl.store(out_ptr + tok64[:, None] * stride_om + offs_n[None, :] * stride_on,
                 (o.to(tl.float32) + acc).to(o.dtype), mask=m_mask[:, None] & n_mask[None, :])
        slot, rank, sl, offs_n, n_mask, m_mask, tok64, o = (
            slot2, rank2, sl2, offs_n2, n_mask2, m_mask2, tok642, o2)
