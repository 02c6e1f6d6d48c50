"""Host µs of each piece of add_lora's armed per-call path (qkv, 4 adapters), GPU.

    python benchmarks/_host_hot_parts.py [--shapes 16:16,64:16,...]   # T:rank, default 16:16

Best of 5 repeats per piece, two rounds, each repeat queued behind GPU spinning (``--idle``:
not), so a GPU slower than the host cannot set the pace.
The pieces: the armed path (``launch._arm_hot``: a native ``Hot``, ``launchers/hot.c``),
the public op's native entry to it, the bound group's native call alone, and each check the
Python path makes; the public op's own checks and lookups. Every shape also reports whether its plan
armed the path, and why not where it did not.
"""

import argparse

import torch

import lora_dispatch as ld
from lora_dispatch import ops
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import best_host_us
from lora_dispatch.kernels.triton import launch as L

ap = argparse.ArgumentParser()
ap.add_argument("--shapes", default="16:16", help="comma list of T:rank")
ap.add_argument("--idle", action="store_true",
                help="do not queue GPU spinning before each repeat (the GPU may then set the pace)")
args = ap.parse_args()
dev = torch.device("cuda")


def _why_not(plan) -> str:
    sp = plan.shrink
    if plan.fused is not None:
        return "fused plan"
    if plan.alt is not None or plan.expand.gluon is not None or sp.gluon is not None or sp.tma:
        return "plan has a Gluon / TMA alternative"
    if plan.memo[4] is None or plan.memo[4] is L._UNBOUND:
        return "group not bound"
    return "unknown"


def pieces(t: int, rank: int) -> None:
    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    for _ in range(30):
        ld.add_lora(out, x, w, batch)
    plan = L.plan_for("add", w, t)
    hot = plan.memo[5]
    armed = hot is not None and hot(out, x, w, batch)
    print(f"T={t} r{rank}: per-call path {'armed' if armed else 'NOT armed: ' + _why_not(plan)}")
    launches = {"public add_lora": lambda: ld.add_lora(out, x, w, batch)}
    checks = {
        "_fast_ok": lambda: ops._fast_ok(out, x, w, batch),
        "_impl": lambda: ops._impl(w),
        "_is_compiling": ops._is_compiling,
        "plan lookup": lambda: L._plans(w).get(("add", t, None, None)),
    }
    if armed:
        bound = plan.memo[4]
        ready, launch, tables, stream_of, d = L._GROUP.hot(bound)
        grids = (plan.shrink.grid, plan.expand.grid)
        s = stream_of(d)
        xs, os_ = x.stride(), out.stride()
        launches["hot()"] = lambda: hot(out, x, w, batch)
        if ops._hot_add is not None:  # the public op's native entry (hot.c)
            launches["fl_hot_add"] = lambda: ops._hot_add(out, x, w, batch)
        launches["native call only"] = lambda: launch(bound, tables, grids, s, d, x, xs[0],
                                                      xs[1], out, os_[0], os_[1])
        checks.update({
            "ready()": ready,
            "_capturing()": L._capturing,
            "stream_of(dev)": lambda: stream_of(d),
            "x.get_device()": x.get_device,
            "x.stride()": x.stride,
            "weakref()": plan.memo[0],
            "get_ident()": L._get_ident,
            "empty lambda": lambda: None,
        })
    if armed and type(hot).__name__ == "Hot":  # the capture check asked in Python instead
        saved = L._capturing
        L._capturing = lambda: False  # a stand-in: the Hot calls it instead of the driver
        plan.memo[5] = None
        for _ in range(3):
            ld.add_lora(out, x, w, batch)
        py_hot = plan.memo[5]
        L._capturing = saved
        if py_hot is not None and py_hot(out, x, w, batch):
            launches["hot(), capture check by a Python stand-in"] = (
                lambda: py_hot(out, x, w, batch))
        plan.memo[5] = hot
    for r in range(2):
        for table, n, spin in ((launches, 200, True), (checks, 20000, False)):
            for name, fn in table.items():
                us = best_host_us(fn, dev, n, spin=spin and not args.idle)
                print(f"T={t} r{rank} r{r} {name:18s} {us:.3f} us")


for shape in args.shapes.split(","):
    t, rank = (int(v) for v in shape.split(":"))
    pieces(t, rank)
