"""Segmented shrink kernel: ``y[i, t, :r] = c[s, i] * x[t] @ A_i[s, :r]^T`` for every slice.

Grid ``(NB * tiles, SPLIT_K)`` with ``NB = cdiv(S * max_rank, RB * BN)``: axis 0 walks the
slot's packed rank rows (fastest, so the rank blocks of one token tile run together and
share ``x`` in L2), then the batch's tiles of ``BM`` tokens of one slot (``tile_map``);
axis 1 the K splits (accumulated with float32 atomics, or written as separate partial
products that the expand sums). Each program owns ``RB`` rank blocks of ``BN`` rows and
feeds every ``x`` tile it loads to all of them, so a wide shrink (qkv at rank 64: 192
rows) streams ``x`` from L2 once per token tile instead of once per rank block. A program
whose tile has no slot, an empty slot, or whose rank rows start past ``S * r`` exits at
once; rank blocks past ``S * r`` inside a program load nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch

__all__ = ["shrink_kernel"]


@triton.jit
def _block_dot(acc, xb, a_ptrs, n_mask, k_mask, EVEN_K: tl.constexpr, PREC: tl.constexpr):
    if EVEN_K:
        ab = tl.load(a_ptrs, mask=n_mask[:, None], other=0.0)  # [BN, BK]
    else:
        ab = tl.load(a_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # [BN, BK]
    return acc + tl.dot(xb, tl.trans(ab), input_precision=PREC)  # [BM, BN]


@triton.jit
def _block_store(acc, offs_n, n_mask, m_mask, tok64, rank, slot, pid_k, scal_ptr, y_ptr,
                 stride_yp, stride_ys, stride_yt, S: tl.constexpr, ATOMIC: tl.constexpr):
    sl = offs_n // tl.maximum(rank, 1)  # [BN]
    col = offs_n - sl * rank  # [BN]
    scale = tl.load(scal_ptr + slot * S + sl, mask=n_mask, other=0.0)  # [BN]
    val = acc * scale[None, :]  # [BM, BN]
    y_ptrs = (y_ptr + pid_k * stride_yp + sl[None, :] * stride_ys
              + tok64[:, None] * stride_yt + col[None, :])  # [BM, BN]
    mask = m_mask[:, None] & n_mask[None, :]  # [BM, BN]
    if ATOMIC:
        tl.atomic_add(y_ptrs, val, mask=mask)
    else:
        tl.store(y_ptrs, val, mask=mask)


@fast_launch
@triton.jit
def shrink_kernel(
    x_ptr, a_ptr, y_ptr, ranks_ptr, scal_ptr, tok_ptr, tiles_ptr,
    T, K, L, NT, K_SPLIT, NB,
    stride_xm, stride_xk, stride_yp, stride_ys, stride_yt,
    S: tl.constexpr, R: tl.constexpr, TILE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, RB: tl.constexpr,
    EVEN_K: tl.constexpr, ATOMIC: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    pid_k = tl.program_id(1)
    tile = tiles_ptr + TILE * 3 * NT + pid_m
    slot = tl.load(tile)
    if (slot < 0) | (slot >= L):
        return
    rank = tl.load(ranks_ptr + slot)
    width = S * rank
    if pid_n * (RB * BN) >= width:
        return
    start = tl.load(tile + NT)
    end = tl.load(tile + 2 * NT)

    offs_m = start + tl.arange(0, BM)  # [BM]
    tok = tl.load(tok_ptr + offs_m, mask=offs_m < end, other=T)  # [BM]
    m_mask = (tok >= 0) & (tok < T)  # [BM]
    tok64 = tl.where(m_mask, tok, 0).to(tl.int64)  # [BM]
    offs_n0 = pid_n * (RB * BN) + tl.arange(0, BN)  # [BN]
    n_mask0 = offs_n0 < width  # [BN]
    offs_k = pid_k * K_SPLIT + tl.arange(0, BK)  # [BK]

    x_ptrs = x_ptr + tok64[:, None] * stride_xm + offs_k[None, :] * stride_xk  # [BM, BK]
    a_ptrs = (a_ptr + slot.to(tl.int64) * (S * R) * K
              + offs_n0[:, None].to(tl.int64) * K + offs_k[None, :])  # [BN, BK]
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    if RB > 1:
        n_mask1 = (offs_n0 + BN) < width  # [BN]
        acc1 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    if RB > 2:
        n_mask2 = (offs_n0 + 2 * BN) < width  # [BN]
        acc2 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    if RB > 3:
        n_mask3 = (offs_n0 + 3 * BN) < width  # [BN]
        acc3 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    k_end = tl.minimum(pid_k * K_SPLIT + K_SPLIT, K)
    for k in range(pid_k * K_SPLIT, k_end, BK):
        k_mask = (offs_k + (k - pid_k * K_SPLIT)) < k_end  # [BK]
        if EVEN_K:
            xb = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BK]
        else:
            xb = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        acc0 = _block_dot(acc0, xb, a_ptrs, n_mask0, k_mask, EVEN_K, PREC)
        if RB > 1:
            acc1 = _block_dot(acc1, xb, a_ptrs + BN * K, n_mask1, k_mask, EVEN_K, PREC)
        if RB > 2:
            acc2 = _block_dot(acc2, xb, a_ptrs + 2 * BN * K, n_mask2, k_mask, EVEN_K, PREC)
        if RB > 3:
            acc3 = _block_dot(acc3, xb, a_ptrs + 3 * BN * K, n_mask3, k_mask, EVEN_K, PREC)
        x_ptrs += BK * stride_xk
        a_ptrs += BK

    _block_store(acc0, offs_n0, n_mask0, m_mask, tok64, rank, slot, pid_k, scal_ptr, y_ptr,
                 stride_yp, stride_ys, stride_yt, S, ATOMIC)
    if RB > 1:
        _block_store(acc1, offs_n0 + BN, n_mask1, m_mask, tok64, rank, slot, pid_k, scal_ptr,
                     y_ptr, stride_yp, stride_ys, stride_yt, S, ATOMIC)
    if RB > 2:
        _block_store(acc2, offs_n0 + 2 * BN, n_mask2, m_mask, tok64, rank, slot, pid_k,
                     scal_ptr, y_ptr, stride_yp, stride_ys, stride_yt, S, ATOMIC)
    if RB > 3:
        _block_store(acc3, offs_n0 + 3 * BN, n_mask3, m_mask, tok64, rank, slot, pid_k,
                     scal_ptr, y_ptr, stride_yp, stride_ys, stride_yt, S, ATOMIC)
