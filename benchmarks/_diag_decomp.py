"""Diagnostic: the two-pass add_lora's own shrink and expand, and the public ops, under
four timing methods (events, do_bench, graph replay, the profiler's kernel time).

    python benchmarks/_diag_decomp.py [--t 8192] [--ranks 16,64]
"""

import argparse
from dataclasses import replace

import torch

from lora_dispatch.bench.kernels import Problem, _build, _public
from lora_dispatch.bench.timing import gpu_time_us, graph_time_us
from lora_dispatch.kernels.triton import launch as L

ap = argparse.ArgumentParser()
ap.add_argument("--t", type=int, default=8192)
ap.add_argument("--ranks", default="16,64")
args = ap.parse_args()
dev = torch.device("cuda")
t = args.t


for rank in (int(r) for r in args.ranks.split(",")):
    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, y3, out = items[0]
    plan = L.plan_for("add", w, t)
    sp, ep = plan.shrink, plan.expand
    print(f"r={rank} add plan: shrink tma={sp.tma} split={sp.split} meta={sp.meta}")
    print(f"r={rank} add plan: expand meta={ep.meta}")
    ws = torch.empty((sp.split, w.num_slices, t, w.max_rank), dtype=torch.float32, device=dev)
    fns = {
        "add_lora": _public(p, batch, items[0]),
        "two_pass": lambda plan=plan, out=out, x=x, w=w, batch=batch: L._two_pass(
            plan, out, x, w, batch, t),
        "shrink": lambda sp=sp, x=x, w=w, batch=batch, ws=ws: L._launch_shrink(
            sp, x, w, batch, ws, t),
        "expand": lambda ep=ep, ws=ws, w=w, batch=batch, out=out: L._launch_expand(
            ep, ws, w, batch, out, t),
        "pub_shrink": _public(replace(p, op="shrink"), batch, items[0]),
        "pub_expand": _public(replace(p, op="expand"), batch, items[0]),
    }
    for name, fn in fns.items():
        c = gpu_time_us(fn, dev)
        d = gpu_time_us(fn, dev, method="do_bench")
        g = graph_time_us(fn, dev)
        k = gpu_time_us(fn, dev, method="kernel")
        print(f"r={rank} {name:10s} clean {c:6.1f} do_bench {d:6.1f} graph {g:6.1f} "
              f"kernel {k:6.1f}", flush=True)
