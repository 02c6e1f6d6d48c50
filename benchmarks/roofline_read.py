"""How much of the copy bandwidth a read-only stream reaches (the shrink's roofline), GPU.

    python benchmarks/roofline_read.py [--json PATH] [--tokens 8192,2048]

The prefill shrink reads ``x [T, 4096]`` (bf16) once and writes almost nothing, so its
ceiling is the device's *read* bandwidth, not its copy bandwidth. This times, with the same
cold-L2 method as the kernel benchmark, a Triton row-sum over ``x`` across block shapes,
warps and stages (the best one is the practical read roofline), ``x.sum(1)``, cuBLAS on the
shrink's GEMM (``x @ A^T``, N = 48 and 192) and the shipped shrink of ``add_lora``, each as %
of the device-to-device copy bandwidth measured in the same run.
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
def _row_sum(x_ptr, out_ptr, T, K, stride_m, BM: tl.constexpr, BK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    acc = tl.zeros((BM,), dtype=tl.float32)
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        v = tl.load(x_ptr + rows[:, None] * stride_m + cols[None, :],
                    mask=(rows[:, None] < T) & (cols[None, :] < K), other=0.0)
        acc += tl.sum(v.to(tl.float32), axis=1)
    tl.store(out_ptr + rows, acc, mask=rows < T)


def _one_t(t: int, dev: torch.device, record) -> None:
    k = 4096
    x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
    out = torch.empty(t, device=dev, dtype=torch.float32)
    nbytes = x.numel() * 2
    best = None
    for bm, bk, warps, stages in itertools.product((16, 32, 64), (256, 512),
                                                   (4, 8), (2, 4)):
        if bm * bk > 32768:
            continue
        grid = (triton.cdiv(t, bm),)

        def fn(bm=bm, bk=bk, warps=warps, stages=stages, grid=grid):
            _row_sum[grid](x, out, t, k, x.stride(0), BM=bm, BK=bk, num_warps=warps,
                           num_stages=stages)

        us = gpu_time_us(fn, dev, warmup_ms=5, rep_ms=20)
        if best is None or us < best[0]:
            best = (us, f"BM={bm} BK={bk} w={warps} s={stages}")
    record("read_best", t, best[1], best[0], nbytes)
    record("x.sum", t, "torch", gpu_time_us(lambda: x.sum(1), dev), nbytes)
    for n in (48, 192):
        a = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        record("cublas", t, f"x@A^T N={n}", gpu_time_us(lambda a=a: x @ a.T, dev),
               nbytes + a.numel() * 2 + t * n * 2)
    for rank in (16, 64):
        p = Problem("add_lora", k, t, rank, 4, torch.bfloat16, dev)
        batch, items = _build(p, 1)
        w, xx, _, _ = items[0]
        plan = L.plan_for("add", w, t).shrink
        y = torch.empty((plan.split, w.num_slices, t, w.max_rank), device=dev)

        def sh(plan=plan, y=y, xx=xx, w=w, batch=batch):
            L._launch_shrink(plan, xx, w, batch, y, t)

        nb = xx.numel() * 2 + 4 * w.num_slices * rank * k * 2 + y[0].numel() * 4
        record("shrink", t, f"qkv r{rank} BM={plan.meta['BM']} BK={plan.meta['BK']} "
               f"split={plan.split}", gpu_time_us(sh, dev), nb)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="8192,2048")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    rows = []

    def record(kind, t, label, us, nbytes):
        gbs = nbytes / us / 1e3
        rows.append({"kind": kind, "T": t, "config": label, "us": round(us, 2),
                     "gbs": round(gbs, 1), "pct_copy": round(100 * gbs / copy, 1)})
        print(f"T={t:5d} {kind:10s} {label:34s} {us:8.2f} us {gbs:7.0f} GB/s "
              f"{100 * gbs / copy:5.1f}% of copy", flush=True)

    for t in map(int, args.tokens.split(",")):
        _one_t(t, dev, record)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
