"""Probe: does a warp-specialized TMA GEMM close the qkv rank-64 prefill shrink's gap to cuBLAS?

    python benchmarks/probe_shrink_ws.py [--json PATH] [--quick]

The shrink of ``add_lora`` over qkv at rank 64 is the dense product ``x [T, 4096] @ A^T``
with ``A [192, 4096]`` per slot. On the H200 cuBLAS does it in ~24 us at T=8192, the shipped
segmented kernel in ~32 us, and every pointer- or TMA-loaded Triton tiling tried so far in
30-37 us (``shrink-probe-...json``, ``shrink-tma-probe-...json``). Untried: Triton 3.6's
Hopper warp specialization (``tl.range(..., warp_specialize=True)``: producer warps issue
the TMA loads, consumer warps the MMAs), wider programs (``RB`` blocks of ``BN`` rank rows
share each ``x`` tile, up to all 192 rows) and K splits into separate partial products (as
``add_lora``'s workspace). Each row is checked against cuBLAS before it is timed.

Percent of copy bandwidth from the minimal bytes (x once, A once, y written in fp32 once per
split).

Run it under ``timeout``: with Triton 3.6 on an H200 the warp-specialized build of
``(128, 64, 1, 64, 4, 4, 1)`` never finished, and those of ``RB = 3`` returned NaN (see
``docs/kernels.md``, thirteenth session; ``shrink-ws-probe-...json``). Rows are written to
``--json`` as they come.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton
import triton.language as tl

from lora_dispatch.bench.kernels import DenseShrinkLog, partials_time
from lora_dispatch.bench.timing import copy_bandwidth_gbs, gpu_time_us


@triton.jit
def _gemm(x_desc, a_desc, y_ptr, M, N, NB, K_SPLIT, BM: tl.constexpr, BN: tl.constexpr,
          BK: tl.constexpr, RB: tl.constexpr, WS: tl.constexpr):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    pid_k = tl.program_id(1)
    m0 = pid_m * BM
    n0 = pid_n * BN * RB
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    acc2 = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    k0 = pid_k * K_SPLIT
    for k in tl.range(k0, k0 + K_SPLIT, BK, warp_specialize=WS):
        xb = x_desc.load([m0, k])  # [BM, BK]
        acc0 = tl.dot(xb, a_desc.load([n0, k]).T, acc0)
        if RB > 1:
            acc1 = tl.dot(xb, a_desc.load([n0 + BN, k]).T, acc1)
        if RB > 2:
            acc2 = tl.dot(xb, a_desc.load([n0 + 2 * BN, k]).T, acc2)
    offs_m = m0 + tl.arange(0, BM)  # [BM]
    base = y_ptr + pid_k.to(tl.int64) * M * N + offs_m[:, None].to(tl.int64) * N  # [BM, 1]
    offs_n = n0 + tl.arange(0, BN)  # [BN]
    tl.store(base + offs_n[None, :], acc0, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
    if RB > 1:
        offs_n += BN
        tl.store(base + offs_n[None, :], acc1,
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
    if RB > 2:
        offs_n += BN
        tl.store(base + offs_n[None, :], acc2,
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


QUICK = [  # BM, BN, RB, BK, warps, stages
    (64, 64, 1, 64, 4, 4), (128, 64, 1, 64, 4, 4), (128, 64, 1, 64, 8, 4),
    (64, 256, 1, 64, 4, 3), (128, 256, 1, 64, 8, 3), (128, 128, 1, 64, 8, 4),
    (64, 64, 3, 64, 4, 4),
]


def configs(quick: bool):
    """(BM, BN, RB, BK, warps, stages, split): RB * BN rows a program, at most 192 + pad."""
    if quick:
        for cfg, split in itertools.product(QUICK, (1, 2)):
            yield (*cfg, split)
        return
    shapes = [(64, 64, 1), (64, 64, 3), (128, 64, 1), (128, 64, 3), (64, 256, 1),
              (128, 256, 1), (128, 128, 1)]
    for (bm, bn, rb), warps, stages, split in itertools.product(
            shapes, (4, 8), (3, 4, 5), (1, 2)):
        smem = stages * (bm + bn * rb) * 64 * 2
        if smem > 220 << 10:
            continue
        yield bm, bn, rb, 64, warps, stages, split


def main(argv: list[str] | None = None) -> int:
    from triton.tools.tensor_descriptor import TensorDescriptor

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", default="8192")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    log = DenseShrinkLog(args.json, dev, copy_bandwidth_gbs(dev))
    k, n = 4096, 192
    a = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / 64
    for t in map(int, args.tokens.split(",")):
        x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
        ref = x.float() @ a.float().T  # [T, N]
        log.add("cublas", "x@A^T", gpu_time_us(lambda x=x: x @ a.T, dev), t, n, k)
        for cfg in configs(args.quick):
            bm, bn, rb, bk, warps, stages, split = cfg
            nb = triton.cdiv(n, bn * rb)
            grid = (nb * triton.cdiv(t, bm), split)
            y = torch.empty(split, t, n, device=dev, dtype=torch.float32)
            xd = TensorDescriptor.from_tensor(x, [bm, bk])
            ad = TensorDescriptor.from_tensor(a, [bn, bk])
            for ws in (False, True):
                def fn(grid=grid, xd=xd, ad=ad, y=y, nb=nb, cfg=cfg, ws=ws, t=t):
                    bm, bn, rb, bk, warps, stages, split = cfg
                    return _gemm[grid](xd, ad, y, t, n, nb, k // split, BM=bm, BN=bn, BK=bk,
                                       RB=rb, WS=ws, num_warps=warps, num_stages=stages)
                us = partials_time(fn, y, ref, dev, f"{cfg} ws={ws}")
                if us is None:
                    continue
                kk = fn()
                log.add("tma_ws" if ws else "tma", list(cfg), us, t, n, k, split,
                        regs=kk.n_regs, spills=kk.n_spills, smem=kk.metadata.shared)
        best = sorted((r for r in log.rows if r["T"] == t and r["kind"] != "cublas"),
                      key=lambda r: r["us"])[:8]
        print("best:", *best, sep="\n  ", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
