"""What bounds the Gluon shrink at prefill: its tensor work, ``x``'s stream or ``A``'s reads
(GPU, Hopper, Triton 3.6).

    python benchmarks/probe_shrink_bounds.py [--json PATH] [--shapes qkv:64:8192,...]
        [--consumers 1,2] [--adapters 4]

Each shape (``layer:rank:T`` as in ``sweep_gluon_shrink.py``; bf16, hidden 4096, adapters in
prefill segments) runs the Gluon shrink as ``add_lora`` launches it (the registry's config,
one or two consumer warpgroups), first checked against the Triton shrink (NaN-poisoned
workspace, relative norm within 1e-3), then timed four ways that differ only in the TMA
descriptors:

- ``full``: the real descriptors;
- ``x_oob``: ``x``'s descriptor ends after the first stage's columns, so every later ``x`` box
  is out of bounds (TMA writes its zeros, no memory read);
- ``a_oob``: the same for ``A``'s descriptor;
- ``both_oob``: both: the ring's barriers and the wgmmas alone.

The program count, ring, barriers and wgmmas are the same in all four, so ``both_oob`` is
the kernel's floor without memory traffic and the others show what each operand's reads add
to it. Times: cold-L2 CUDA events (median) and the profiler's kernel span (median); percent of
copy bandwidth from the full run's minimal bytes (``x``, the used ``A`` once, ``y``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics

import torch

OUTS = {"qkv": (4096, 1024, 1024), "one": (4096,), "gate_up": (14336, 14336)}
SHAPES = "qkv:64:8192,one:64:8192,gate_up:64:8192,qkv:16:4096,qkv:64:2048"
MODES = ("full", "x_oob", "a_oob", "both_oob")


def _probe(spec: str, consumers: list[int], adapters: int, dev, copy: float,
           g: torch.Generator) -> list[dict]:
    import lora_dispatch as ld
    from lora_dispatch.bench.timing import gpu_time_us, kernel_spans_us
    from lora_dispatch.kernels.triton import launch as L

    layer, rank, t = spec.split(":")
    rank, t, k = int(rank), int(t), 4096
    outs = OUTS[layer]
    s = len(outs)
    w = ld.LoRAWeights(adapters, k, outs, rank, dtype=torch.bfloat16, device=dev)
    for slot in range(adapters):
        w.load(slot, [torch.randn(rank, k, generator=g, device=dev) / 64 for _ in outs],
               [torch.randn(o, rank, generator=g, device=dev) for o in outs], 0.5)
    per = -(-t // adapters)
    batch = ld.LoRABatch.from_segments([1] * t, [min(i // per, adapters - 1) for i in range(t)],
                                       device=dev)
    x = torch.randn(t, k, generator=g, device=dev).to(torch.bfloat16)
    os.environ["LORA_DISPATCH_GLUON"] = "0"
    base = L._shrink_plan(w, t, atomic=False)
    ws = torch.empty(base.split, s, t, rank, device=dev)
    L._launch_shrink(base, x, w, batch, ws, t)
    ref = ws.sum(0)  # [S, T, R]
    os.environ["LORA_DISPATCH_GLUON"] = "1"
    p = L._shrink_plan(w, t, atomic=False).alt  # the Gluon plan (forced), its own split
    os.environ.pop("LORA_DISPATCH_GLUON", None)
    gp0 = p.gluon
    nbytes = t * k * 2 + adapters * s * rank * k * 2 + 4 * p.split * s * t * rank
    rows = []
    for n in consumers:
        cfg = gp0.cfg
        if n == 2 and cfg.block_m != 64:
            cfg = dataclasses.replace(cfg, block_m=64, num_warps=4)
        cfg = dataclasses.replace(cfg, consumers=n)
        gp = gp0._replace(cfg=cfg, cx=(*gp0.cx[:-1], n),
                          grid=(L._tiles(t, cfg.block_m, w.num_slots), gp0.grid[1]),
                          tile=L.x_tile(cfg.block_m, cfg.block_k, x.dtype, cfg.chunks))
        wsg = torch.empty(p.split, s, t, rank, device=dev)
        ys = wsg.stride()[:3]
        args = list(L._gluon_args(gp, p.k_split, x, w, batch, wsg, t, ys))
        head = 64 * cfg.chunks  # the first stage's columns
        x_oob = L.rows_descriptor(x, t, head, x.stride(0), gp.tile)
        a2 = w.lora_a.view(-1, k)[:, :head].contiguous()  # [rows, head]
        a_oob = L.a_descriptor(a2, cfg.block_r, cfg.block_k, cfg.chunks)
        descs = {"full": (args[0], args[1]), "x_oob": (x_oob, args[1]),
                 "a_oob": (args[0], a_oob), "both_oob": (x_oob, a_oob)}
        wsg.fill_(float("nan"))
        L.shrink_gluon_kernel[gp.grid](*args)
        err = ((wsg.sum(0) - ref).norm() / ref.norm()).item()
        ok = err < 1e-3
        print(f"{spec} consumers={n} {cfg}: rel err {err:.2e} {'ok' if ok else 'WRONG'}",
              flush=True)
        for mode in MODES:
            a = list(args)
            a[0], a[1] = descs[mode]

            def run(a=a, grid=gp.grid):
                L.shrink_gluon_kernel[grid](*a)
            us = gpu_time_us(run, dev, warmup_ms=5, rep_ms=30)
            kern = statistics.median(kernel_spans_us(run, dev))
            rows.append(dict(shape=spec, adapters=adapters, consumers=n, cfg=str(cfg),
                             mode=mode, ok=ok, err=err, us=round(us, 2),
                             kernel_us=round(kern, 2),
                             pct_copy=round(100 * nbytes / us / 1e3 / copy, 1),
                             pct_copy_kernel=round(100 * nbytes / kern / 1e3 / copy, 1)))
            r = rows[-1]
            print(f"  {mode:9s} events {r['us']:7.2f} us ({r['pct_copy']:5.1f}%)  kernel "
                  f"{r['kernel_us']:7.2f} us ({r['pct_copy_kernel']:5.1f}%)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--consumers", default="1,2")
    ap.add_argument("--adapters", type=int, default=4)
    args = ap.parse_args(argv)

    from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, write_json

    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    print(f"copy bandwidth {copy:.0f} GB/s", flush=True)
    g = torch.Generator(device=dev).manual_seed(0)
    rows: list[dict] = []
    consumers = [int(v) for v in args.consumers.split(",")]
    for spec in args.shapes.split(","):
        rows += _probe(spec, consumers, args.adapters, dev, copy, g)
        if args.json:
            write_json(args.json, {**env_record(dev), "copy_gbs": copy,
                                   "reproduce": "python benchmarks/probe_shrink_bounds.py"},
                       rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
