"""Probe: which part of the segmented shrink costs time against a plain gathered GEMM.

    python benchmarks/probe_shrink_ablate.py

A frozen copy of the shrink as it was before the slice-aligned blocks (kept on purpose: the
probe is the evidence for that change), with switches that remove one
feature at a time: the runtime K-loop bounds (split-K), the early exits, and the epilogue
(0 shipped: per-column division by the runtime rank + gathered scale; 1 constexpr rank, no
scale; 2 slice by comparisons + scalar scale loads; 3 as 2 without scale; 4 division without
scale; 5 as 0 but stored as packed [T, S*R] rows with contiguous columns).
Times qkv rank 64 at T = 8192 (bf16, one adapter).
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import gpu_time_us
from lora_dispatch.kernels.triton import launch as L


@triton.jit
def _shrink_abl(
    x_ptr, a_ptr, y_ptr, ranks_ptr, scal_ptr, tok_ptr, tiles_ptr,
    T, K, L, NT, K_SPLIT, NB,
    stride_xm, stride_xk, stride_yp, stride_ys, stride_yt,
    S: tl.constexpr, R: tl.constexpr, TILE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    STATIC_LOOP: tl.constexpr, EPI: tl.constexpr, NO_EXIT: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    pid_k = tl.program_id(1)
    tile = tiles_ptr + TILE * 3 * NT + pid_m
    slot = tl.load(tile)
    rank = tl.load(ranks_ptr + slot)
    width = S * rank
    if not NO_EXIT:
        if (slot < 0) | (slot >= L):
            return
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
    if STATIC_LOOP:
        lo = 0
        hi = K
    else:
        lo = pid_k * K_SPLIT
        hi = tl.minimum(pid_k * K_SPLIT + K_SPLIT, K)
    for _k in range(lo, hi, BK):
        xb = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BK]
        ab = tl.load(a_ptrs, mask=n_mask[:, None], other=0.0)  # [BN, BK]
        acc += tl.dot(xb, tl.trans(ab))
        x_ptrs += BK * stride_xk
        a_ptrs += BK
    if EPI == 1:  # constexpr rank: no division, no scale
        sl = offs_n // R  # [BN]
        col = offs_n - sl * R  # [BN]
        val = acc
    elif EPI >= 2:  # slice by comparisons, scale from S scalar loads (EPI 3: no scale)
        sl = offs_n * 0  # [BN]
        for i in tl.static_range(1, S):
            sl += (offs_n >= i * rank).to(tl.int32)
        col = offs_n - sl * rank  # [BN]
        if EPI == 2:
            scale = tl.zeros((BN,), dtype=tl.float32)  # [BN]
            for i in tl.static_range(S):
                scale = tl.where(sl == i, tl.load(scal_ptr + slot * S + i), scale)
            val = acc * scale[None, :]  # [BM, BN]
        else:
            val = acc
    elif EPI == 4:  # runtime division, no scale
        sl = offs_n // tl.maximum(rank, 1)  # [BN]
        col = offs_n - sl * rank  # [BN]
        val = acc
    else:
        sl = offs_n // tl.maximum(rank, 1)  # [BN]
        col = offs_n - sl * rank  # [BN]
        scale = tl.load(scal_ptr + slot * S + sl, mask=n_mask, other=0.0)  # [BN]
        val = acc * scale[None, :]  # [BM, BN]
    if EPI == 5:  # packed [T, S * R] rows: contiguous columns
        y_ptrs = y_ptr + tok64[:, None] * (S * R) + offs_n[None, :]  # [BM, BN]
        tl.store(y_ptrs, val, mask=m_mask[:, None] & n_mask[None, :])
        return
    y_ptrs = (y_ptr + pid_k * stride_yp + sl[None, :] * stride_ys
              + tok64[:, None] * stride_yt + col[None, :])  # [BM, BN]
    tl.store(y_ptrs, val, mask=m_mask[:, None] & n_mask[None, :])


def main() -> int:
    dev = torch.device("cuda")
    t = 8192
    p = Problem("add_lora", 4096, t, 64, 1, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, _ = items[0]
    plan = L.plan_for("add", w, t).shrink
    ws = torch.empty((plan.split, w.num_slices, t, w.max_rank), device=dev)
    tm, xs, ys = batch.tile_map, x.stride(), ws.stride()
    base = (x, w.lora_a, ws, w.ranks, w.scalings, batch.sorted_tokens, tm, t, 4096,
            w.num_slots, tm.shape[2], plan.k_split, plan.nb, xs[0], xs[1], ys[0], ys[1], ys[2])
    m = plan.meta
    for static, epi, no_exit in itertools.product((False,), (0, 1, 2, 3, 4, 5), (False,)):
        def fn(static=static, epi=epi, no_exit=no_exit):
            return _shrink_abl[plan.grid](*base, S=m["S"], R=m["R"], TILE=m["TILE"],
                                          BM=m["BM"], BN=m["BN"], BK=m["BK"],
                                          STATIC_LOOP=static, EPI=epi,
                                          NO_EXIT=no_exit, num_warps=m["num_warps"],
                                          num_stages=m["num_stages"])
        k = fn()
        us = gpu_time_us(fn, dev, warmup_ms=5, rep_ms=20)
        print(f"static_loop={static:d} epilogue={epi:d} no_exit={no_exit:d}: "
              f"{us:6.1f} us  regs {k.n_regs}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
