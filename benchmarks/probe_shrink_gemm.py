"""Probe: what limits the wide (qkv rank 64) prefill shrink on Hopper.

    python benchmarks/probe_shrink_gemm.py [--json PATH]

Times the dense GEMM the shrink performs, ``x [T, 4096] @ A^T`` with ``A [N, 4096]`` (N = 48,
192), three ways: Triton with pointer loads (cp.async pipeline, as the shipped kernel), Triton
with TMA tensor descriptors, and cuBLAS; the shipped segmented shrink on the same shape is
the reference row. Percent of the copy bandwidth from the minimal bytes (x once, A once, y
written in fp32).
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton
import triton.language as tl

from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, gpu_time_us, write_json
from lora_dispatch.kernels.triton import launch as L


@triton.jit
def _gemm_ptr(x_ptr, a_ptr, y_ptr, M, N, K, NB, BM: tl.constexpr, BN: tl.constexpr,
              BK: tl.constexpr):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    offs_m = pid_m * BM + tl.arange(0, BM)  # [BM]
    offs_n = pid_n * BN + tl.arange(0, BN)  # [BN]
    offs_k = tl.arange(0, BK)  # [BK]
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * K + offs_k[None, :]  # [BM, BK]
    a_ptrs = a_ptr + offs_n[:, None] * K + offs_k[None, :]  # [BN, BK]
    acc = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    for _k in range(0, K, BK):
        xb = tl.load(x_ptrs, mask=offs_m[:, None] < M, other=0.0)  # [BM, BK]
        ab = tl.load(a_ptrs, mask=offs_n[:, None] < N, other=0.0)  # [BN, BK]
        acc += tl.dot(xb, tl.trans(ab))
        x_ptrs += BK
        a_ptrs += BK
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]  # [BM, BN]
    tl.store(y_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _gemm_gather(x_ptr, a_ptr, y_ptr, tok_ptr, M, N, K, NB, stride_xm, BM: tl.constexpr,
                 BN: tl.constexpr, BK: tl.constexpr):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    offs_m = pid_m * BM + tl.arange(0, BM)  # [BM]
    tok = tl.load(tok_ptr + offs_m, mask=offs_m < M, other=M)  # [BM]
    m_mask = tok < M  # [BM]
    tok64 = tl.where(m_mask, tok, 0).to(tl.int64)  # [BM]
    offs_n = pid_n * BN + tl.arange(0, BN)  # [BN]
    offs_k = tl.arange(0, BK)  # [BK]
    x_ptrs = x_ptr + tok64[:, None] * stride_xm + offs_k[None, :]  # [BM, BK]
    a_ptrs = a_ptr + offs_n[:, None] * K + offs_k[None, :]  # [BN, BK]
    acc = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    for _k in range(0, K, BK):
        xb = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BK]
        ab = tl.load(a_ptrs, mask=offs_n[:, None] < N, other=0.0)  # [BN, BK]
        acc += tl.dot(xb, tl.trans(ab))
        x_ptrs += BK
        a_ptrs += BK
    y_ptrs = y_ptr + tok64[:, None] * N + offs_n[None, :]  # [BM, BN]
    tl.store(y_ptrs, acc, mask=m_mask[:, None] & (offs_n[None, :] < N))


@triton.jit
def _gemm_tma(x_desc, a_desc, y_ptr, M, N, K, NB, BM: tl.constexpr, BN: tl.constexpr,
              BK: tl.constexpr, WS: tl.constexpr):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    acc = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    for k in tl.range(0, K, BK, warp_specialize=WS):
        xb = x_desc.load([pid_m * BM, k])  # [BM, BK]
        ab = a_desc.load([pid_n * BN, k])  # [BN, BK]
        acc = tl.dot(xb, ab.T, acc)
    offs_m = pid_m * BM + tl.arange(0, BM)  # [BM]
    offs_n = pid_n * BN + tl.arange(0, BN)  # [BN]
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]  # [BM, BN]
    tl.store(y_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


CONFIGS = [  # BM, BN, BK, warps, stages
    (64, 64, 64, 4, 4), (64, 64, 128, 4, 3), (128, 64, 64, 4, 4), (128, 128, 64, 8, 4),
    (128, 256, 64, 8, 3), (64, 64, 256, 4, 3),
]


def main(argv: list[str] | None = None) -> int:
    from triton.tools.tensor_descriptor import TensorDescriptor

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--kinds", default="ptr,tma", help="ptr, tma, tma_ws (warp-specialized)")
    ap.add_argument("--n", default="192,48")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                   device=dev))
    copy = copy_bandwidth_gbs(dev)
    rows = []
    t, k = 8192, 4096
    x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
    for n in map(int, args.n.split(",")):
        a = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        y = torch.empty(t, n, device=dev, dtype=torch.float32)
        nbytes = x.numel() * 2 + a.numel() * 2 + y.numel() * 4
        ref = (x.float() @ a.float().T)

        def record(kind, cfg, us, n=n, nbytes=nbytes):
            row = dict(kind=kind, T=t, N=n, cfg=cfg, us=round(us, 2),
                       pct_copy=round(100 * nbytes / us / 1e3 / copy, 1))
            rows.append(row)
            print(row, flush=True)

        record("cublas", "x@A^T", gpu_time_us(lambda a=a: x @ a.T, dev))
        rank = n // 3
        p = Problem("add_lora", k, t, rank, 1, torch.bfloat16, dev)
        batch, items = _build(p, 1)
        w, xx, _, _ = items[0]
        plan = L.plan_for("add", w, t).shrink
        ws = torch.empty((plan.split, w.num_slices, t, w.max_rank), device=dev)
        record("shipped_shrink", str(plan.cx), gpu_time_us(
            lambda plan=plan, ws=ws, xx=xx, w=w, batch=batch:
            L._launch_shrink(plan, xx, w, batch, ws, t), dev))
        jit = L.shrink_kernel._fl_jit
        tm, xs, ys_ = batch.tile_map, xx.stride(), ws.stride()
        jargs = (xx, w.lora_a, ws, w.ranks, w.scalings, batch.sorted_tokens, tm, t, k,
                 w.num_slots, tm.shape[2], plan.k_split, plan.nb, xs[0], xs[1], ys_[0],
                 ys_[1], ys_[2], *plan.cx)
        k_shr = jit[plan.grid](*jargs, num_warps=plan.num_warps, num_stages=plan.num_stages)
        print(f"shipped shrink: regs {k_shr.n_regs} spills {k_shr.n_spills} "
              f"smem {k_shr.metadata.shared} grid {plan.grid}", flush=True)
        record("shipped_shrink_jit", "triton jit launch", gpu_time_us(
            lambda jit=jit, plan=plan, jargs=jargs: jit[plan.grid](
                *jargs, num_warps=plan.num_warps, num_stages=plan.num_stages), dev))
        tok = torch.arange(t, device=dev, dtype=torch.int32)
        for bm, bn, bk, warps, stages in CONFIGS[:3]:
            nb = triton.cdiv(n, bn)
            grid = (nb * triton.cdiv(t, bm),)
            kk = _gemm_gather[grid](x, a, y, tok, t, n, k, nb, x.stride(0), BM=bm, BN=bn,
                                    BK=bk, num_warps=warps, num_stages=stages)
            print(f"gather regs {kk.n_regs} smem {kk.metadata.shared}", flush=True)
            record("gather", [bm, bn, bk, warps, stages], gpu_time_us(
                lambda grid=grid, nb=nb, bm=bm, bn=bn, bk=bk, w_=warps, s_=stages, a=a, y=y,
                tok=tok, n=n:
                _gemm_gather[grid](x, a, y, tok, t, n, k, nb, x.stride(0), BM=bm, BN=bn,
                                   BK=bk, num_warps=w_, num_stages=s_), dev))
        for (bm, bn, bk, warps, stages), kind in itertools.product(
                CONFIGS, args.kinds.split(",")):
            if bn > max(64, triton.next_power_of_2(n)):
                continue
            nb = triton.cdiv(n, bn)
            grid = (nb * triton.cdiv(t, bm),)
            if kind == "ptr":
                def fn(grid=grid, a=a, y=y, nb=nb, bm=bm, bn=bn, bk=bk, w_=warps, s_=stages):
                    return _gemm_ptr[grid](x, a, y, t, y.shape[1], k, nb, BM=bm, BN=bn,
                                           BK=bk, num_warps=w_, num_stages=s_)
            else:
                xd = TensorDescriptor.from_tensor(x, [bm, bk])
                ad = TensorDescriptor.from_tensor(a, [bn, bk])

                def fn(grid=grid, xd=xd, ad=ad, y=y, nb=nb, bm=bm, bn=bn, bk=bk, w_=warps,
                       s_=stages, ws=kind == "tma_ws"):
                    _gemm_tma[grid](xd, ad, y, t, y.shape[1], k, nb, BM=bm, BN=bn, BK=bk,
                                    WS=ws, num_warps=w_, num_stages=s_)
            try:
                y.fill_(float("nan"))
                fn()
                err = ((y - ref).norm() / ref.norm()).item()
                if not err < 1e-2:
                    print(f"{kind} {bm, bn, bk, warps, stages}: wrong result (rel {err:.3g})")
                    continue
                us = gpu_time_us(fn, dev, warmup_ms=5, rep_ms=20)
            except Exception as exc:  # configs that fail to compile are skipped
                print(f"{kind} {bm, bn, bk, warps, stages} failed: {exc!r}"[:200])
                continue
            record(kind, [bm, bn, bk, warps, stages], us)
            if kind == "ptr":
                kk = fn()
                if kk is not None:
                    print(f"ptr regs {kk.n_regs} smem {kk.metadata.shared}", flush=True)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
