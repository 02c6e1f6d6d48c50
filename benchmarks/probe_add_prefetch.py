"""Prefill ``add_lora`` with the shrink prefetching the expand's first ``base_out`` rows into
L2 (GPU, Hopper, Triton 3.6).

    python benchmarks/probe_add_prefetch.py [--json PATH] [--shapes 64:8192,16:8192]
        [--mb 0,8,16,24,32,48] [--from 0,0.5]

The qkv rank-64 Gluon shrink at T=8192 moves ``x`` at about two thirds of the copy bandwidth
(its tensor work and its stream take turns), so DRAM has room during it, while the expand
after it is DRAM-bound (``base_out`` read and written). Here a copy of the library's Gluon
shrink (same partitions: ring, consumer, stores; ``add_lora``'s workspace epilogue, prefill
segments) has a producer warp that, from K step ``from * k_iters`` on, also issues
``cp.async.bulk.prefetch.L2`` (one lane, one instruction every ``every`` K steps) over its
share of the first ``mb`` MB of ``base_out`` (program ``m`` takes bytes ``[m * chunk, (m + 1)
* chunk)``, the rows the expand's first programs
read: its grid runs column groups fastest within a token tile). The library's Gluon expand
follows as ``add_lora`` launches it.

Per shape (qkv 4096 -> 4096+1024+1024, bf16, 4 adapters in segments): the library's
``add_lora``, then the pair for every ``(mb, from)``; each result checked against the
float64 reference, timed by cold-L2 CUDA events (median) and by the profiler's span of the
two kernels. ``mb=0`` is the copy without prefetches (it should match the library).
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from lora_dispatch.kernels.triton.shrink_gluon_kernel import AVAILABLE

if AVAILABLE:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier

    from lora_dispatch.kernels.triton.shrink_gluon_kernel import (
        PRODUCER_REGS,
        _box,
        _consumer,
        epilogue,
        ring,
    )
    from lora_dispatch.kernels.triton.tiles import tile_head

    @gluon.jit
    def _prefetch(base, off, size):
        """One ``cp.async.bulk.prefetch.L2`` of ``size`` bytes at ``base + off`` (lane 0)."""
        blk: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
        lane = gl.arange(0, 32, layout=blk)  # [32]
        ptrs = base + off + lane * 0  # [32]
        gl.inline_asm_elementwise(
            "{\n\t.reg .pred p;\n\tsetp.eq.u32 p, $3, 0;\n\t"
            "@p cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;\n\t}",
            "=r,l,r,r", [ptrs, gl.full([32], 0, gl.int32, blk) + size, lane],
            dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _producer_pf(x_desc, a_desc, x_bufs, a_bufs, ready, empty, first, ar0, ar1, ar2, k0,
                     k_iters, pf_base, pf_from, pf_per, pf_every, NB: gl.constexpr,
                     STAGES: gl.constexpr, PF: gl.constexpr):
        BK: gl.constexpr = x_desc.block_type.shape[1]
        a_bytes: gl.constexpr = NB * a_desc.block_type.nbytes
        x_bytes: gl.constexpr = x_desc.block_type.nbytes
        for i in range(k_iters):
            s = i % STAGES
            mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
            k = k0 + i * BK
            mbarrier.expect(ready.index(s), x_bytes + a_bytes)
            _box(x_desc, first, k, ready.index(s), x_bufs.index(s), False)
            _box(a_desc, ar0, k, ready.index(s), a_bufs.index(s * NB), False)
            if NB > 1:
                _box(a_desc, ar1, k, ready.index(s), a_bufs.index(s * NB + 1), False)
            if NB > 2:
                _box(a_desc, ar2, k, ready.index(s), a_bufs.index(s * NB + 2), False)
            if PF:
                j = i - pf_from
                if (j >= 0) & (j % pf_every == 0):
                    _prefetch(pf_base, j.to(gl.int64) * pf_per, pf_per * pf_every)

    @gluon.jit
    def shrink_pf_kernel(
        x_desc, a_desc, x_ptr, y_ptr, ranks_ptr, scal_ptr, tok_ptr, tiles_ptr,
        T, K, L, NT, K_SPLIT,
        stride_xm, stride_xk, stride_yp, stride_ys, stride_yt,
        pf_ptr, pf_chunk, pf_from, pf_per, pf_every,
        S: gl.constexpr, R: gl.constexpr, TILE: gl.constexpr, STAGES: gl.constexpr,
        ATOMIC: gl.constexpr, FILL: gl.constexpr, GATHER: gl.constexpr, PDL: gl.constexpr,
        PF: gl.constexpr, num_warps: gl.constexpr,
    ):
        BM: gl.constexpr = x_desc.block_type.shape[0]
        BK: gl.constexpr = x_desc.block_type.shape[1]
        BR: gl.constexpr = a_desc.block_type.shape[0]
        layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BR, 16])
        pid_m = gl.program_id(0)
        pid_k = gl.program_id(1)
        slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
        if (rank == 0) | (end <= start):
            return
        first = gl.load(tok_ptr + start)
        base = slot * (S * R)
        k0 = pid_k * K_SPLIT
        k_iters = (gl.minimum(k0 + K_SPLIT, K) - k0) // BK
        pf_base = pf_ptr + (pid_m * K // K_SPLIT + pid_k).to(gl.int64) * pf_chunk
        x_bufs, a_bufs, ready, empty = ring(x_desc, a_desc, S, STAGES)
        acc0, acc1, acc2 = gl.warp_specialize(
            [(_consumer, (x_ptr, tok_ptr, x_bufs, a_bufs, ready, empty, start, end, T, k0,
                          k_iters, stride_xm, stride_xk, True, BM, S, STAGES, layout,
                          False)),
             (_producer_pf, (x_desc, a_desc, x_bufs, a_bufs, ready, empty, first, base,
                             base + rank, base + 2 * rank, k0, k_iters, pf_base, pf_from,
                             pf_per, pf_every, S, STAGES, PF))],
            [1], [PRODUCER_REGS])
        epilogue(acc0, acc1, acc2, rank, slot, start, end, T, pid_k, tok_ptr, scal_ptr, y_ptr,
                 stride_yp, stride_ys, stride_yt, S, R, BM, BR, ATOMIC, FILL, PDL, layout)


def _shape(rank: int, t: int, mbs: list[int], froms: list[float], evs: list[int], dev,
           copy: float) -> list:
    import lora_dispatch as ld
    from lora_dispatch.bench.kernels import Problem, _build, min_bytes
    from lora_dispatch.bench.timing import gpu_time_us, kernel_spans_us, pct_of_copy
    from lora_dispatch.kernels import reference
    from lora_dispatch.kernels.triton import launch as L

    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev, (4096, 1024, 1024))
    batch, ((w, x, _, out),) = _build(p, 1)
    base = out.clone()
    want = base.double()
    reference.add_lora(want, x.double(), w, batch)
    nbytes = min_bytes(p)

    def close() -> bool:
        err = (out.double() - want).abs().max().item()
        return err <= 2e-2 * max(1.0, want.abs().max().item())

    rows = []

    def record(name, fn, **kw):
        for _ in range(2):
            out.copy_(base)
            fn()
        out.copy_(base)
        fn()
        ok = close()
        us = gpu_time_us(fn, dev, warmup_ms=5, rep_ms=40)
        spans = kernel_spans_us(fn, dev)
        k = statistics.median(spans)
        rows.append(dict(rank=rank, T=t, variant=name, ok=ok, us=round(us, 2),
                         kernel_us=round(k, 2), pct_copy=round(pct_of_copy(nbytes, us, copy), 1),
                         pct_copy_kernel=round(pct_of_copy(nbytes, k, copy), 1), **kw))
        r = rows[-1]
        print(f"r{rank} T{t} {name:22s} {'ok' if ok else 'WRONG'} events {r['us']:7.2f} us "
              f"({r['pct_copy']:5.1f}%) kernel {r['kernel_us']:7.2f} us "
              f"({r['pct_copy_kernel']:5.1f}%)", flush=True)

    record("library", lambda: ld.add_lora(out, x, w, batch))
    ap = L._pick(L.plan_for("add", w, t), x, w)
    sp, g = ap.shrink, ap.expand.gluon
    if sp.gluon is None or g is None or sp.gluon.cfg.chunks != 1:
        print(f"r{rank} T{t}: not the Gluon shrink + Gluon expand pair with [BM, 64] boxes "
              f"({sp.gluon}, {g}); skipped", flush=True)
        return rows
    gp = sp.gluon
    ws = L._workspace(ap.ws_numel, x)
    args = list(L._gluon_args(gp, sp.k_split, x, w, batch, ws, t, ap.ys))
    head, tail = args[:18], args[18:]  # runtime parameters | constexprs, num_warps
    cx = dict(zip(("S", "R", "TILE", "STAGES", "ATOMIC", "FILL", "GATHER", "PDL"), tail[:8]))
    eargs = L._gluon_expand_args(g, ws, w, batch, out, t, ap.ys)
    k_iters = sp.k_split // gp.cfg.block_k
    programs = gp.grid[0] * gp.grid[1]
    u8 = out.view(torch.uint8)
    print(f"r{rank} T{t}: shrink grid {gp.grid}, {k_iters} K steps, expand grid {g.grid}",
          flush=True)
    for mb in mbs:
        for frac, every in itertools.product(froms, evs) if mb else [(0.0, 1)]:
            pf_from = int(frac * k_iters)
            steps = k_iters - pf_from
            every = min(every, steps)
            per = (mb << 20) // programs // steps // 16 * 16
            chunk = per * steps

            def pair(per=per, chunk=chunk, pf_from=pf_from, every=every, mb=mb):
                shrink_pf_kernel[gp.grid](*head, u8, chunk, pf_from, per, every, **cx,
                                          PF=bool(mb), num_warps=gp.cfg.num_warps)
                L.expand_gluon_kernel[g.grid](*eargs)
            record(f"mb{mb}-from{frac:g}-every{every}", pair, mb=mb, pf_from=pf_from,
                   every=every, prefetched_mb=round(chunk * programs / 2**20, 2))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default="64:8192,16:8192,64:4096")
    ap.add_argument("--mb", default="0,8,16,24,32,48")
    ap.add_argument("--from", dest="froms", default="0,0.5")
    ap.add_argument("--every", default="1,8,64", help="K steps a prefetch covers")
    args = ap.parse_args(argv)

    from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, write_json

    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    print(f"copy bandwidth {copy:.0f} GB/s", flush=True)
    rows: list[dict] = []
    for spec in args.shapes.split(","):
        rank, t = (int(v) for v in spec.split(":"))
        rows += _shape(rank, t, [int(v) for v in args.mb.split(",")],
                       [float(v) for v in args.froms.split(",")],
                       [int(v) for v in args.every.split(",")], dev, copy)
        if args.json:
            write_json(args.json, {**env_record(dev), "copy_gbs": copy,
                                   "reproduce": "python benchmarks/probe_add_prefetch.py"},
                       rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
