"""Host µs of each piece of add_lora's armed per-call path (qkv, rank 16, 4 adapters, T=16), GPU.

    python benchmarks/_host_hot_parts.py

Best of 5 repeats per piece, two rounds; the GPU is not kept busy (decode kernels keep up).
The pieces: the closure (``launch._arm_hot``), its native call alone, and each check it
makes; the public op's own checks and lookups.
"""

import timeit

import torch

import lora_dispatch as ld
from lora_dispatch import ops
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.kernels.triton import launch as L

dev = torch.device("cuda")
p = Problem("add_lora", 4096, 16, 16, 4, torch.bfloat16, dev)
batch, items = _build(p, 1)
w, x, _, out = items[0]
for _ in range(30):
    ld.add_lora(out, x, w, batch)
plan = L.plan_for("add", w, 16)
hot = plan.memo[5]
assert hot is not None and hot(out, x, w, batch), "the per-call path is not armed"
bound = plan.memo[4]
ready, launch, tables, stream_of, d = L._GROUP.hot(bound)
grids = (plan.shrink.grid, plan.expand.grid)
s = stream_of(d)
xs, os_ = x.stride(), out.stride()
wref = plan.memo[0]
launches = {  # pieces that launch kernels: fewer calls per repeat
    "hot()": lambda: hot(out, x, w, batch),
    "native call only": lambda: launch(bound, tables, grids, s, d, x, xs[0], xs[1], out,
                                       os_[0], os_[1]),
    "public add_lora": lambda: ld.add_lora(out, x, w, batch),
}
checks = {
    "ready()": ready,
    "_capturing()": L._capturing,
    "stream_of(dev)": lambda: stream_of(d),
    "x.get_device()": x.get_device,
    "x.stride()": x.stride,
    "weakref()": wref,
    "get_ident()": L._get_ident,
    "empty lambda": lambda: None,
    "_fast_ok": lambda: ops._fast_ok(out, x, w, batch),
    "_impl": lambda: ops._impl(w),
    "_is_compiling": ops._is_compiling,
    "plan lookup": lambda: L._plans(w).get(("add", 16, None, None)),
}
for r in range(2):
    for table, n in ((launches, 200), (checks, 20000)):
        for name, fn in table.items():
            torch.cuda.synchronize()
            us = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
            print(f"r{r} {name:18s} {us:.3f} us")
    torch.cuda.synchronize()
