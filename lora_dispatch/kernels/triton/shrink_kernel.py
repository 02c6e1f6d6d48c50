"""Segmented shrink kernel: ``y[i, t, :r] = c[s, i] * x[t] @ A_i[s, :r]^T`` for every slice.

Grid ``(NB * tiles, SPLIT_K)`` with ``NB = cdiv(S * max_rank, BN)``: axis 0 walks the
slot's packed rank rows (fastest, so the rank blocks of one token tile run together and
share ``x`` in L2), then the batch's tiles of ``BM`` tokens of one slot (``tile_map``);
axis 1 the K splits (accumulated with float32 atomics, or written as separate partial
products that the expand sums). A program whose tile has no slot, an empty slot, or whose
rank block starts past ``S * r`` exits at once, so work and bytes follow each slot's rank.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch

__all__ = ["shrink_kernel"]


@fast_launch
@triton.jit
def shrink_kernel(
    x_ptr, a_ptr, y_ptr, ranks_ptr, scal_ptr, tok_ptr, tiles_ptr,
    T, K, L, NT, K_SPLIT, NB,
    stride_xm, stride_xk, stride_yp, stride_ys, stride_yt,
    S: tl.constexpr, R: tl.constexpr, TILE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
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
    if pid_n * BN >= width:
        return
    start = tl.load(tile + NT)
    end = tl.load(tile + 2 * NT)

    offs_m = start + tl.arange(0, BM)  # [BM]
    tok = tl.load(tok_ptr + offs_m, mask=offs_m < end, other=T)  # [BM]
    m_mask = (tok >= 0) & (tok < T)  # [BM]
    tok64 = tl.where(m_mask, tok, 0).to(tl.int64)  # [BM]
    offs_n = pid_n * BN + tl.arange(0, BN)  # [BN]
    n_mask = offs_n < width  # [BN]
    offs_k = pid_k * K_SPLIT + tl.arange(0, BK)  # [BK]

    x_ptrs = x_ptr + tok64[:, None] * stride_xm + offs_k[None, :] * stride_xk  # [BM, BK]
    a_ptrs = (a_ptr + slot.to(tl.int64) * (S * R) * K
              + offs_n[:, None].to(tl.int64) * K + offs_k[None, :])  # [BN, BK]
    acc = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    k_end = tl.minimum(pid_k * K_SPLIT + K_SPLIT, K)
    for k in range(pid_k * K_SPLIT, k_end, BK):
        if EVEN_K:
            xb = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BK]
            ab = tl.load(a_ptrs, mask=n_mask[:, None], other=0.0)  # [BN, BK]
        else:
            k_mask = (offs_k + (k - pid_k * K_SPLIT)) < k_end  # [BK]
            xb = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            ab = tl.load(a_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.dot(xb, tl.trans(ab), input_precision=PREC)  # [BM, BN]
        x_ptrs += BK * stride_xk
        a_ptrs += BK

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
