"""The Gluon shrink with its operands in L2: what is left of its time without DRAM traffic
(GPU, Hopper, Triton 3.6).

    python benchmarks/probe_shrink_l2.py [--json PATH] [--shapes qkv:64:8192,...]

Each shape (``layer:rank:T`` as in ``sweep_gluon_shrink.py``; bf16, hidden 4096, 4 adapters in
prefill segments, built as ``bench_kernels.py`` builds its rows) runs the Gluon shrink as
``add_lora`` launches it (the registry's config, ``LORA_DISPATCH_GLUON=1``), checked against
the Triton shrink, then timed twice with the same grid, ring and wgmmas:

- ``dram``: the batch's tile map;
- ``l2``: a tile map in which every tile of a slot covers that slot's first ``block_m`` rows,
  so all programs read the same few ``x`` rows (4 slots x ``block_m`` rows, ~2 MB) and the
  ``A`` blocks (<= 6 MB): both stay in L2, and DRAM sees almost nothing.

``l2`` is the kernel's floor from its tensor work, ring and L2 reads; ``dram - l2`` is what
streaming ``x`` from DRAM adds. Times: cold-L2 CUDA events and the profiler's kernel span
(medians); percent of copy bandwidth from the ``dram`` run's minimal bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

OUTS = {"qkv": (4096, 1024, 1024), "one": (4096,), "gate_up": (14336, 14336)}
SHAPES = "qkv:64:8192,gate_up:64:8192,one:64:8192,qkv:16:8192,one:16:8192,qkv:64:4096"


def _l2_tiles(tm: torch.Tensor, tile: int, bm: int) -> torch.Tensor:
    """``tm`` with row ``tile``'s tiles moved to their slot's first ``bm`` rows."""
    tm = tm.clone()
    slot, start, end = tm[tile, 0].tolist(), tm[tile, 1].tolist(), tm[tile, 2].tolist()
    head: dict[int, tuple[int, int]] = {}
    for j, s in enumerate(slot):
        if s >= 0 and end[j] > start[j]:
            a, b = head.get(s, (start[j], end[j]))
            head[s] = (min(a, start[j]), max(b, end[j]))
    for j, s in enumerate(slot):
        if s in head and end[j] > start[j]:
            a, b = head[s]
            tm[tile, 1, j] = a
            tm[tile, 2, j] = min(a + bm, b)
    return tm


def _probe(spec: str, dev, copy: float) -> list[dict]:
    from lora_dispatch.batch import tile_index
    from lora_dispatch.bench.kernels import Problem, _build
    from lora_dispatch.bench.timing import gpu_time_us, kernel_spans_us
    from lora_dispatch.kernels.triton import launch as L

    layer, rank, t = spec.split(":")
    rank, t, k, adapters = int(rank), int(t), 4096, 4
    outs = OUTS[layer]
    s = len(outs)
    batch, ((w, x, _, _),) = _build(Problem("shrink", k, t, rank, adapters, torch.bfloat16,
                                            dev, outs), 1)
    os.environ["LORA_DISPATCH_GLUON"] = "0"
    base = L._shrink_plan(w, t, atomic=False)
    ws = torch.empty(base.split, s, t, rank, device=dev)
    L._launch_shrink(base, x, w, batch, ws, t)
    ref = ws.sum(0)  # [S, T, R]
    os.environ.pop("LORA_DISPATCH_GLUON", None)
    p = L._shrink_plan(w, t, atomic=False).alt
    if p is None:
        os.environ["LORA_DISPATCH_GLUON"] = "1"
        p = L._shrink_plan(w, t, atomic=False).alt
        os.environ.pop("LORA_DISPATCH_GLUON", None)
    gp = p.gluon
    wsg = torch.empty(p.split, s, t, rank, device=dev)
    args = list(L._gluon_args(gp, p.k_split, x, w, batch, wsg, t, wsg.stride()[:3]))
    wsg.fill_(float("nan"))
    L.shrink_gluon_kernel[gp.grid](*args)
    err = ((wsg.sum(0) - ref).norm() / ref.norm()).item()
    tm_at = next(i for i, a in enumerate(args) if a is batch.tile_map)
    l2 = list(args)
    l2[tm_at] = _l2_tiles(batch.tile_map, tile_index(gp.cfg.block_m), gp.cfg.block_m)
    nbytes = t * k * 2 + adapters * s * rank * k * 2 + 4 * p.split * s * t * rank
    rows = []
    for mode, a in (("dram", args), ("l2", l2)):
        def run(a=a, grid=gp.grid):
            L.shrink_gluon_kernel[grid](*a)
        us = gpu_time_us(run, dev, warmup_ms=5, rep_ms=30)
        kern = statistics.median(kernel_spans_us(run, dev))
        rows.append(dict(shape=spec, adapters=adapters, cfg=str(gp.cfg), mode=mode,
                         ok=err < 1e-3, err=err, us=round(us, 2), kernel_us=round(kern, 2),
                         pct_copy=round(100 * nbytes / us / 1e3 / copy, 1),
                         pct_copy_kernel=round(100 * nbytes / kern / 1e3 / copy, 1)))
        r = rows[-1]
        print(f"{spec:16s} {mode:4s} {'ok' if r['ok'] else 'WRONG'} events {r['us']:7.2f} us "
              f"kernel {r['kernel_us']:7.2f} us ({r['pct_copy_kernel']:5.1f}%)  {gp.cfg}",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=SHAPES)
    args = ap.parse_args(argv)

    from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, write_json

    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    print(f"copy bandwidth {copy:.0f} GB/s", flush=True)
    rows: list[dict] = []
    for spec in args.shapes.split(","):
        rows += _probe(spec, dev, copy)
        if args.json:
            write_json(args.json, {**env_record(dev), "copy_gbs": copy,
                                   "reproduce": "python benchmarks/probe_shrink_l2.py"}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
