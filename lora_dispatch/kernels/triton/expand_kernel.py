"""Segmented expand kernel: ``out[t, off_i + n] += y[i, t, :r] @ B_i[s, n, :r]^T``.

Grid ``(NB * tiles,)``: ``NB`` column groups (fastest) times the batch's tiles. A group is
``NCOL`` blocks of ``BN`` columns walked in a pipelined loop (so one program streams long
row segments); groups tile every slice separately (``sum_i cdiv(out_i, BN * NCOL)``), so
slices of different widths and offsets (q/k/v, gate/up) share one launch and no block
straddles two slices; with ``TRIM`` a group that runs past its slice's end walks only the
blocks inside it. Each program reads its tile's ``y`` rows (summing ``SPLIT`` partial
products of a split-K shrink), the slot's ``B`` block up to the slot's rank (rounded up to
8), and read-add-writes ``out`` in its own dtype. Tiles without a slot, empty slots and
tokens past ``T`` are skipped. ``RCAP`` bounds every slot's rank (``R``, ``B``'s row length,
or for eager calls the loaded ranks' power-of-two box): with ``BR >= RCAP`` a tile's ``y``
rows are read once, before its column loop. With ``RMASK`` (short tiles, where ``B``'s bytes
weigh) ``B`` is read up to each slot's rank, rounded up to 8 where ``R`` is a multiple of 8
(16-byte vectors; ``B`` is zero past the rank), otherwise up to ``RCAP`` (a mask constant
along ``B``'s rows: fewer registers; 3% on the rank-32 expand at T=8192, H200). With
``PDL`` (``add_lora`` on Hopper) the kernel is launched while the shrink still runs and
waits for it only before its first ``y`` read. With ``RLOW`` a tile whose slot's rank is at most
``RLOW`` takes a one-step ``RLOW``-wide rank block instead of ``BR`` (with ``RMID``, one whose
rank is at most ``RMID`` an ``RMID``-wide one): code paths chosen on the device, so a plan for
``RCAP``, a CUDA graph's, costs low-rank slots what a plan for their rank would. With ``YEARLY``
a one-step tile reads ``y`` without waiting for its slot's rank (columns past it zeroed after).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch
from .tiles import flag_wait, pdl_wait, slice_block, tile_head, tile_rows

__all__ = ["expand_kernel"]


@triton.jit
def expand_rows(y_ptr, b_ptr, out_ptr, slot, rank, sl, c0, c1, m_mask, tok64, N, stride_yp,
                stride_ys, stride_yt, stride_yr, stride_om, stride_on, flag_ptr, need,
                R: tl.constexpr, RCAP: tl.constexpr, RMASK: tl.constexpr, SPLIT: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, NCOL: tl.constexpr,
                PREFETCH: tl.constexpr, PREC: tl.constexpr, WAIT: tl.constexpr,
                TRIM: tl.constexpr, YEARLY: tl.constexpr):
    """``out[tok, c0 + j * BN ...] += y[sl, tok, :rank] @ B[slot, cols, :rank]^T`` over the
    ``NCOL`` column blocks of a tile of a slot with ``0 < rank <= RCAP <= R`` (``R``: ``B``'s
    row length); with ``TRIM`` only over the blocks that start before ``c1`` (a slice
    narrower than, or not a multiple of, ``NCOL * BN``).

    ``WAIT`` is what stands between the tile's prologue (and first ``out`` block) and its
    first ``y`` read: 0 nothing, 1 ``griddepcontrol.wait`` (programmatic dependent launch),
    2 :func:`flag_wait` on ``flag_ptr`` reaching ``need`` (``y`` then read past L1). With
    ``YEARLY`` (and ``BR >= RCAP``) ``y`` is read up to ``RCAP`` and its columns past the
    rank are zeroed after the load, which then waits on the token ids only.
    """
    YC: tl.constexpr = ".cg" if WAIT == 2 else ""
    offs_r = tl.arange(0, BR)  # [BR]
    if RMASK and R % 8 == 0:
        rb = tl.multiple_of((rank + 7) // 8 * 8, 8)  # B's columns read
    elif RMASK:  # rows not 16-byte vectors; rounding up would run past the row (and B)
        rb = rank
    else:
        rb = RCAP
    y_ptrs = y_ptr + sl * stride_ys + tok64[:, None] * stride_yt + offs_r[None, :] * stride_yr
    b_base = b_ptr + slot.to(tl.int64) * N * R + offs_r[:, None]  # [BR, 1]
    o_rows = out_ptr + tok64[:, None] * stride_om  # [BM, 1]
    if PREFETCH:
        offs_n = c0 + tl.arange(0, BN)  # [BN]
        o = tl.load(o_rows + offs_n[None, :] * stride_on,
                    mask=m_mask[:, None] & (offs_n < c1)[None, :],
                    other=0.0)  # [BM, BN] first block, in flight while y arrives
    if WAIT == 1:  # launched beside the shrink that writes y (add_lora): wait for it
        pdl_wait()
    elif WAIT == 2:
        flag_wait(flag_ptr, need)
    if BR >= RCAP:
        if YEARLY and BR == RCAP:
            ym = m_mask[:, None]  # [BM, 1]
        elif YEARLY:
            ym = m_mask[:, None] & (offs_r < RCAP)[None, :]  # [BM, BR]
        else:
            ym = m_mask[:, None] & (offs_r < rank)[None, :]  # [BM, BR]
        yb = tl.load(y_ptrs, mask=ym, other=0.0, cache_modifier=YC).to(tl.float32)  # [BM, BR]
        for p in tl.static_range(1, SPLIT):
            yb += tl.load(y_ptrs + p * stride_yp, mask=ym, other=0.0,
                          cache_modifier=YC).to(tl.float32)
        if YEARLY:
            yb = tl.where((offs_r < rank)[None, :], yb, 0.0)
        yb = yb.to(b_ptr.dtype.element_ty)

    if TRIM:
        ncol = tl.minimum((c1 - c0 + BN - 1) // BN, NCOL)
    else:
        ncol = NCOL
    for j in range(ncol):
        offs_n = c0 + j * BN + tl.arange(0, BN)  # [BN]
        n_mask = offs_n < c1  # [BN]
        mask = m_mask[:, None] & n_mask[None, :]  # [BM, BN]
        o_ptrs = o_rows + offs_n[None, :] * stride_on  # [BM, BN]
        if PREFETCH:
            nxt = (offs_n + BN < c1) & (j + 1 < NCOL)  # [BN]
            o_next = tl.load(o_rows + (offs_n + BN)[None, :] * stride_on,
                             mask=m_mask[:, None] & nxt[None, :],
                             other=0.0)  # [BM, BN] next block, in flight during this one
        else:
            o = tl.load(o_ptrs, mask=mask, other=0.0)  # [BM, BN]
        b_ptrs = b_base + offs_n[None, :].to(tl.int64) * R  # [BR, BN]
        if BR >= RCAP:
            bb = tl.load(b_ptrs, mask=(offs_r < rb)[:, None] & n_mask[None, :], other=0.0)
            acc = tl.dot(yb, bb, input_precision=PREC)  # [BM, BN]
        else:
            acc = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
            for r0 in range(0, rank, BR):
                ym = m_mask[:, None] & ((offs_r + r0) < rank)[None, :]  # [BM, BR]
                yr = tl.load(y_ptrs + r0 * stride_yr, mask=ym, other=0.0,
                             cache_modifier=YC).to(tl.float32)
                for p in tl.static_range(1, SPLIT):
                    yr += tl.load(y_ptrs + r0 * stride_yr + p * stride_yp, mask=ym,
                                  other=0.0, cache_modifier=YC).to(tl.float32)
                bm_ = ((offs_r + r0) < rb)[:, None] & n_mask[None, :]  # [BR, BN]
                bb = tl.load(b_ptrs + r0, mask=bm_, other=0.0)  # [BR, BN]
                acc += tl.dot(yr.to(bb.dtype), bb, input_precision=PREC)  # [BM, BN]
        # the delta is rounded to out's dtype before the add: one [BM, BN] layout change (of
        # the 16-bit delta) instead of two (out into the dot's layout, the sum back)
        tl.store(o_ptrs, (o.to(tl.float32) + acc.to(o.dtype).to(tl.float32)).to(o.dtype),
                 mask=mask)
        if PREFETCH:
            o = o_next


@fast_launch(pdl="PDL")
@triton.jit
def expand_kernel(
    y_ptr, b_ptr, out_ptr, ranks_ptr, bounds_ptr, tok_ptr, tiles_ptr,
    T, L, NT, N, NB,
    stride_yp, stride_ys, stride_yt, stride_yr, stride_om, stride_on,
    S: tl.constexpr, R: tl.constexpr, RCAP: tl.constexpr, RMASK: tl.constexpr,
    TILE: tl.constexpr, SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BR: tl.constexpr, NCOL: tl.constexpr,
    PREFETCH: tl.constexpr, ALIGN: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr,
    TRIM: tl.constexpr, RLOW: tl.constexpr, RMID: tl.constexpr, YEARLY: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
    sl, c0, c1 = slice_block(bounds_ptr, pid_n, S, BN * NCOL, ALIGN)
    m_mask, tok64 = tile_rows(start, end, tok_ptr, T, BM)  # [BM], [BM]
    if rank == 0:  # no slot or an empty slot
        return

    # flag_ptr / need unused: WAIT is 0 or 1 (PDL) here
    if RLOW > 0:
        if rank <= RLOW:
            expand_rows(y_ptr, b_ptr, out_ptr, slot, rank, sl, c0, c1, m_mask, tok64, N,
                        stride_yp, stride_ys, stride_yt, stride_yr, stride_om, stride_on,
                        tiles_ptr, 0, R, RLOW, RMASK, SPLIT, BM, BN, RLOW, NCOL, PREFETCH, PREC,
                        PDL, TRIM, YEARLY)
            return
        if RMID > 0:
            if rank <= RMID:
                expand_rows(y_ptr, b_ptr, out_ptr, slot, rank, sl, c0, c1, m_mask, tok64, N,
                            stride_yp, stride_ys, stride_yt, stride_yr, stride_om, stride_on,
                            tiles_ptr, 0, R, RMID, RMASK, SPLIT, BM, BN, RMID, NCOL, PREFETCH,
                            PREC, PDL, TRIM, YEARLY)
                return
    expand_rows(y_ptr, b_ptr, out_ptr, slot, rank, sl, c0, c1, m_mask, tok64, N, stride_yp,
                stride_ys, stride_yt, stride_yr, stride_om, stride_on, tiles_ptr, 0, R, RCAP,
                RMASK, SPLIT, BM, BN, BR, NCOL, PREFETCH, PREC, PDL, TRIM, YEARLY)
