"""Fused decode kernel: shrink and expand of a few tokens in one launch.

Grid ``(NB * tiles,)`` as in :mod:`.expand_kernel`. Each program computes the rank-``r``
shrink of its tile for its own slice (``x[BM, K] @ A_i[s, :r]^T``, scaled), keeps it in
registers and multiplies it straight into its block of ``B``. The shrink is recomputed by
every column block (``A`` comes from L2 after the first), which pays off only while the
batch has very few tiles; :func:`lora_dispatch.devices.configs.fused_max_tokens` decides.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch
from .tiles import slice_block, tile_head, tile_rows

__all__ = ["fused_kernel"]


@fast_launch
@triton.jit
def fused_kernel(
    x_ptr, a_ptr, b_ptr, out_ptr, ranks_ptr, scal_ptr, bounds_ptr, tok_ptr, tiles_ptr,
    T, K, L, NT, N, NB,
    stride_xm, stride_xk, stride_om, stride_on,
    S: tl.constexpr, R: tl.constexpr, TILE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
    EVEN_K: tl.constexpr, ALIGN: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
    sl, c0, c1 = slice_block(bounds_ptr, pid_n, S, BN, ALIGN)
    m_mask, tok64 = tile_rows(start, end, tok_ptr, T, BM)  # [BM], [BM]
    if rank == 0:  # no slot or an empty slot
        return

    offs_r = tl.arange(0, BR)  # [BR]
    r_mask = offs_r < rank  # [BR]
    offs_k = tl.arange(0, BK)  # [BK]
    offs_n = c0 + tl.arange(0, BN)  # [BN]
    n_mask = offs_n < c1  # [BN]
    o_ptrs = out_ptr + tok64[:, None] * stride_om + offs_n[None, :] * stride_on  # [BM, BN]
    mask = m_mask[:, None] & n_mask[None, :]  # [BM, BN]
    o = tl.load(o_ptrs, mask=mask, other=0.0)  # [BM, BN]

    x_ptrs = x_ptr + tok64[:, None] * stride_xm + offs_k[None, :] * stride_xk  # [BM, BK]
    a_ptrs = (a_ptr + slot.to(tl.int64) * (S * R) * K
              + (sl * rank + offs_r)[:, None].to(tl.int64) * K + offs_k[None, :])  # [BR, BK]
    ya = tl.zeros((BM, BR), dtype=tl.float32)  # [BM, BR]
    for k in range(0, K, BK):
        if EVEN_K:
            xb = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BK]
            ab = tl.load(a_ptrs, mask=r_mask[:, None], other=0.0)  # [BR, BK]
        else:
            k_mask = (offs_k + k) < K  # [BK]
            xb = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            ab = tl.load(a_ptrs, mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        ya += tl.dot(xb, tl.trans(ab), input_precision=PREC)  # [BM, BR]
        x_ptrs += BK * stride_xk
        a_ptrs += BK
    ya *= tl.load(scal_ptr + slot * S + sl)

    b_ptrs = (b_ptr + slot.to(tl.int64) * N * R
              + offs_n[None, :].to(tl.int64) * R + offs_r[:, None])  # [BR, BN]
    bb = tl.load(b_ptrs, mask=(offs_r < R)[:, None] & n_mask[None, :], other=0.0)  # [BR, BN]
    acc = tl.dot(ya.to(bb.dtype), bb, input_precision=PREC)  # [BM, BN]
    tl.store(o_ptrs, (o.to(tl.float32) + acc).to(o.dtype), mask=mask)
