"""Segmented shrink kernel: ``y[i, t, :r] = c[s, i] * x[t] @ A_i[s, :r]^T`` for every slice.

Grid ``(NB * tiles, SPLIT_K)``. A slot's ``A`` rows are packed ``[S * r, K]`` (slice ``i`` in
rows ``i * r ... i * r + r``, ``R`` rows a slot); each slice is cut into ``NBR = cdiv(RCAP,
BN)`` blocks of ``BN`` rows (``RCAP``: a bound on every slot's rank, ``R`` or, for eager
``add_lora``, the loaded ranks' power-of-two box), and a program owns ``RB`` consecutive
(slice, block) pairs, so ``NB = cdiv(S * NBR, RB)``. Axis 0 walks these groups (fastest, so the
programs of one token tile run together and share ``x`` in L2), then the batch's tiles of
``BM`` tokens of one slot (``tile_map``); axis 1 the K splits (accumulated with float32
atomics, or written as separate partial products that the expand sums). Every ``x`` tile a
program loads feeds all of its ``RB`` blocks. A block never straddles two slices, so its output
columns are contiguous: the store is vectorized (a per-column slice lookup made the epilogue's
addressing cost 40% of the kernel on H200, see ``benchmarks/probe_shrink_ablate.py``). Programs
whose tile has no slot, an empty slot, or whose blocks all start past the slot's rank exit at
once; blocks past the rank inside a program load nothing. With ``RLOW`` (a program's one block
covering a slice's ``RCAP`` rows: ``RB = 1``, ``BN >= RCAP``, no ``FILL``) a tile whose slot's
rank is at most ``RLOW`` runs the same product over ``RLOW`` rows instead (and, with ``RMID``,
one whose rank is at most ``RMID`` over ``RMID`` rows): code paths chosen on the device, so a
plan for ``RCAP`` (a CUDA graph's) costs low-rank slots what a plan for their rank would.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch
from .tiles import pdl_launch_dependents, tile_head, tile_rows

__all__ = ["shrink_kernel"]


@triton.jit
def _block(q, rank, S: tl.constexpr, NBR: tl.constexpr, BN: tl.constexpr):
    """Slice, first column, row mask ``[BN]`` and liveness of (slice, block) pair ``q``."""
    sl = q // NBR
    c0 = (q - sl * NBR) * BN
    live = (c0 < rank) & (sl < S)
    return sl, c0, ((c0 + tl.arange(0, BN)) < rank) & live, live


@triton.jit
def _block_dot(acc, xb, a_ptrs, n_mask, k_mask, EVEN_K: tl.constexpr, PREC: tl.constexpr):
    if EVEN_K:
        ab = tl.load(a_ptrs, mask=n_mask[:, None], other=0.0)  # [BN, BK]
    else:
        ab = tl.load(a_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # [BN, BK]
    return acc + tl.dot(xb, tl.trans(ab), input_precision=PREC)  # [BM, BN]


@triton.jit
def accumulate(x_ptr, a_ptr, slot, rank, tok64, m_mask, sl0, c00, n_mask0, sl1, c01, n_mask1,
               sl2, c02, n_mask2, sl3, c03, n_mask3, k0, k_len, K, stride_xm, stride_xk,
               S: tl.constexpr, R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr, RB: tl.constexpr, EVEN_K: tl.constexpr, PREC: tl.constexpr):
    """The ``RB`` products ``x[tok, k0:k_end] @ A[slot, block rows, k0:k_end]^T`` of a
    program's blocks, ``k_end = min(k0 + k_len, K)`` (``[BM, BN]`` float32 each; unused
    ones stay zero)."""
    offs_k = k0 + tl.arange(0, BK)  # [BK]
    row0 = sl0 * rank + c00
    x_ptrs = x_ptr + tok64[:, None] * stride_xm + offs_k[None, :] * stride_xk  # [BM, BK]
    a_ptrs = (a_ptr + slot.to(tl.int64) * (S * R) * K
              + (row0 + tl.arange(0, BN))[:, None].to(tl.int64) * K
              + offs_k[None, :])  # [BN, BK]
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    acc2 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    acc3 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    a_off1 = (sl1 * rank + c01 - row0).to(tl.int64) * K
    a_off2 = (sl2 * rank + c02 - row0).to(tl.int64) * K
    a_off3 = (sl3 * rank + c03 - row0).to(tl.int64) * K
    k_end = tl.minimum(k0 + k_len, K)
    for k in range(k0, k_end, BK):
        k_mask = (offs_k + (k - k0)) < k_end  # [BK]
        if EVEN_K:
            xb = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BK]
        else:
            xb = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        acc0 = _block_dot(acc0, xb, a_ptrs, n_mask0, k_mask, EVEN_K, PREC)
        if RB > 1:
            acc1 = _block_dot(acc1, xb, a_ptrs + a_off1, n_mask1, k_mask, EVEN_K, PREC)
        if RB > 2:
            acc2 = _block_dot(acc2, xb, a_ptrs + a_off2, n_mask2, k_mask, EVEN_K, PREC)
        if RB > 3:
            acc3 = _block_dot(acc3, xb, a_ptrs + a_off3, n_mask3, k_mask, EVEN_K, PREC)
        x_ptrs += BK * stride_xk
        a_ptrs += BK
    return acc0, acc1, acc2, acc3


@triton.jit
def _block_store(acc, sl, c0, n_mask, m_mask, tok64, slot, pid_k, scal_ptr, y_ptr,
                 stride_yp, stride_ys, stride_yt, S: tl.constexpr, R: tl.constexpr,
                 BN: tl.constexpr, ATOMIC: tl.constexpr, FILL: tl.constexpr):
    scale = tl.load(scal_ptr + slot * S + tl.minimum(sl, S - 1))
    cols = tl.multiple_of(c0, BN) + tl.arange(0, BN)  # [BN]
    y_ptrs = (y_ptr + pid_k * stride_yp + sl * stride_ys + tok64[:, None] * stride_yt
              + cols[None, :])  # [BM, BN]
    if FILL:  # every column below R, zeros past the rank
        mask = m_mask[:, None] & ((cols < R) & (sl < S))[None, :]  # [BM, BN]
        tl.store(y_ptrs, tl.where(n_mask[None, :], acc * scale, 0.0), mask=mask)
    elif ATOMIC:
        tl.atomic_add(y_ptrs, acc * scale, mask=m_mask[:, None] & n_mask[None, :],
                      sem="relaxed")
    else:
        tl.store(y_ptrs, acc * scale, mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _zero_block(sl, c0, m_mask, tok64, y_ptr, stride_ys, stride_yt, S: tl.constexpr,
                R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    cols = c0 + tl.arange(0, BN)  # [BN]
    y_ptrs = y_ptr + sl * stride_ys + tok64[:, None] * stride_yt + cols[None, :]  # [BM, BN]
    mask = m_mask[:, None] & ((cols < R) & (sl < S))[None, :]  # [BM, BN]
    tl.store(y_ptrs, tl.zeros((BM, BN), dtype=tl.float32), mask=mask)


@triton.jit
def _zero_blocks(sl0, c00, sl1, c01, sl2, c02, sl3, c03, m_mask, tok64, y_ptr, stride_ys,
                 stride_yt, S: tl.constexpr, R: tl.constexpr, BM: tl.constexpr,
                 BN: tl.constexpr, RB: tl.constexpr):
    """Zeros into the ``RB`` blocks of a program without work (``FILL``: one K split)."""
    _zero_block(sl0, c00, m_mask, tok64, y_ptr, stride_ys, stride_yt, S, R, BM, BN)
    if RB > 1:
        _zero_block(sl1, c01, m_mask, tok64, y_ptr, stride_ys, stride_yt, S, R, BM, BN)
    if RB > 2:
        _zero_block(sl2, c02, m_mask, tok64, y_ptr, stride_ys, stride_yt, S, R, BM, BN)
    if RB > 3:
        _zero_block(sl3, c03, m_mask, tok64, y_ptr, stride_ys, stride_yt, S, R, BM, BN)


@triton.jit
def _blocks(pid_n, rank, S: tl.constexpr, NBR: tl.constexpr, BN: tl.constexpr,
            RB: tl.constexpr):
    """The ``RB`` (slice, first column, row mask ``[BN]``) of program column ``pid_n``, then
    whether any is live. Pairs past ``RB`` repeat the first (unused by the callers)."""
    q0 = pid_n * RB
    sl0, c00, n_mask0, live = _block(q0, rank, S, NBR, BN)
    sl1, c01, n_mask1 = sl0, c00, n_mask0
    sl2, c02, n_mask2 = sl0, c00, n_mask0
    sl3, c03, n_mask3 = sl0, c00, n_mask0
    if RB > 1:
        sl1, c01, n_mask1, live1 = _block(q0 + 1, rank, S, NBR, BN)
        live = live | live1
    if RB > 2:
        sl2, c02, n_mask2, live2 = _block(q0 + 2, rank, S, NBR, BN)
        live = live | live2
    if RB > 3:
        sl3, c03, n_mask3, live3 = _block(q0 + 3, rank, S, NBR, BN)
        live = live | live3
    return (sl0, c00, n_mask0, sl1, c01, n_mask1, sl2, c02, n_mask2, sl3, c03, n_mask3,
            live)


@triton.jit
def _store_blocks(acc0, acc1, acc2, acc3, sl0, c00, n_mask0, sl1, c01, n_mask1, sl2, c02,
                  n_mask2, sl3, c03, n_mask3, m_mask, tok64, slot, pid_k, scal_ptr, y_ptr,
                  stride_yp, stride_ys, stride_yt, S: tl.constexpr, R: tl.constexpr,
                  BN: tl.constexpr, RB: tl.constexpr, ATOMIC: tl.constexpr,
                  FILL: tl.constexpr):
    _block_store(acc0, sl0, c00, n_mask0, m_mask, tok64, slot, pid_k, scal_ptr, y_ptr,
                 stride_yp, stride_ys, stride_yt, S, R, BN, ATOMIC, FILL)
    if RB > 1:
        _block_store(acc1, sl1, c01, n_mask1, m_mask, tok64, slot, pid_k, scal_ptr, y_ptr,
                     stride_yp, stride_ys, stride_yt, S, R, BN, ATOMIC, FILL)
    if RB > 2:
        _block_store(acc2, sl2, c02, n_mask2, m_mask, tok64, slot, pid_k, scal_ptr, y_ptr,
                     stride_yp, stride_ys, stride_yt, S, R, BN, ATOMIC, FILL)
    if RB > 3:
        _block_store(acc3, sl3, c03, n_mask3, m_mask, tok64, slot, pid_k, scal_ptr, y_ptr,
                     stride_yp, stride_ys, stride_yt, S, R, BN, ATOMIC, FILL)


@triton.jit
def _narrow(x_ptr, a_ptr, y_ptr, scal_ptr, slot, rank, tok64, m_mask, pid_n, pid_k, K_SPLIT, K,
            stride_xm, stride_xk, stride_yp, stride_ys, stride_yt, S: tl.constexpr,
            R: tl.constexpr, BM: tl.constexpr, W: tl.constexpr, BK: tl.constexpr,
            EVEN_K: tl.constexpr, ATOMIC: tl.constexpr, PREC: tl.constexpr,
            PDL: tl.constexpr):
    """Slice ``pid_n``'s first ``W`` rows of a tile whose slot's rank is in ``0 ... W`` (0:
    nothing to write), then the end-of-work PDL trigger (``PDL == 2``)."""
    if rank > 0:
        sl, c0, n_mask, _ = _block(pid_n, rank, S, 1, W)
        acc, _, _, _ = accumulate(
            x_ptr, a_ptr, slot, rank, tok64, m_mask, sl, c0, n_mask, sl, c0, n_mask, sl, c0,
            n_mask, sl, c0, n_mask, pid_k * K_SPLIT, K_SPLIT, K, stride_xm, stride_xk, S, R, BM,
            W, BK, 1, EVEN_K, PREC)
        _block_store(acc, sl, c0, n_mask, m_mask, tok64, slot, pid_k, scal_ptr, y_ptr,
                     stride_yp, stride_ys, stride_yt, S, R, W, ATOMIC, False)
    if PDL == 2:
        pdl_launch_dependents()


@fast_launch
@triton.jit
def shrink_kernel(
    x_ptr, a_ptr, y_ptr, ranks_ptr, scal_ptr, tok_ptr, tiles_ptr,
    T, K, L, NT, K_SPLIT, NB,
    stride_xm, stride_xk, stride_yp, stride_ys, stride_yt,
    S: tl.constexpr, R: tl.constexpr, RCAP: tl.constexpr, TILE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, RB: tl.constexpr,
    EVEN_K: tl.constexpr, ATOMIC: tl.constexpr, FILL: tl.constexpr, PREC: tl.constexpr,
    PDL: tl.constexpr, RLOW: tl.constexpr, RMID: tl.constexpr,
):
    if PDL == 1:  # the expand after it may start now (it waits before reading y)
        pdl_launch_dependents()
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    pid_k = tl.program_id(1)
    slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
    m_mask, tok64 = tile_rows(start, end, tok_ptr, T, BM)  # [BM], [BM]
    if RLOW > 0:  # RB = 1, one block a slice: program pid_n owns slice pid_n's rows
        if rank <= RLOW:
            _narrow(x_ptr, a_ptr, y_ptr, scal_ptr, slot, rank, tok64, m_mask, pid_n, pid_k,
                    K_SPLIT, K, stride_xm, stride_xk, stride_yp, stride_ys, stride_yt, S, R, BM,
                    RLOW, BK, EVEN_K, ATOMIC, PREC, PDL)
            return
        if RMID > 0:
            if rank <= RMID:
                _narrow(x_ptr, a_ptr, y_ptr, scal_ptr, slot, rank, tok64, m_mask, pid_n, pid_k,
                        K_SPLIT, K, stride_xm, stride_xk, stride_yp, stride_ys, stride_yt, S, R,
                        BM, RMID, BK, EVEN_K, ATOMIC, PREC, PDL)
                return
    NBR: tl.constexpr = (RCAP + BN - 1) // BN  # blocks a slice: no slot's rank passes RCAP
    (sl0, c00, n_mask0, sl1, c01, n_mask1, sl2, c02, n_mask2, sl3, c03, n_mask3,
     live) = _blocks(pid_n, rank, S, NBR, BN, RB)
    if not live:  # no slot, an empty slot, or every block past the rank
        if FILL:
            _zero_blocks(sl0, c00, sl1, c01, sl2, c02, sl3, c03, m_mask, tok64, y_ptr,
                         stride_ys, stride_yt, S, R, BM, BN, RB)
        return
    acc0, acc1, acc2, acc3 = accumulate(
        x_ptr, a_ptr, slot, rank, tok64, m_mask, sl0, c00, n_mask0, sl1, c01, n_mask1, sl2,
        c02, n_mask2, sl3, c03, n_mask3, pid_k * K_SPLIT, K_SPLIT, K, stride_xm, stride_xk, S,
        R, BM, BN, BK, RB, EVEN_K, PREC)

    _store_blocks(acc0, acc1, acc2, acc3, sl0, c00, n_mask0, sl1, c01, n_mask1, sl2, c02,
                  n_mask2, sl3, c03, n_mask3, m_mask, tok64, slot, pid_k, scal_ptr, y_ptr,
                  stride_yp, stride_ys, stride_yt, S, R, BN, RB, ATOMIC, FILL)
    if PDL == 2:  # or once this program's work is done (several waves: see launch.py)
        pdl_launch_dependents()
