"""Diagnostic: the two-pass add_lora's own shrink and expand under three timing methods."""

import torch

from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import gpu_time_us, graph_time_us
from lora_dispatch.kernels.triton import launch as L

dev = torch.device("cuda")
t = 8192
for rank in (16, 64):
    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, y3, out = items[0]
    plan = L.plan_for("add", w, t)
    sp, ep = plan.shrink, plan.expand
    ws = torch.empty((sp.split, w.num_slices, t, w.max_rank), dtype=torch.float32, device=dev)
    fns = {
        "two_pass": lambda plan=plan, out=out, x=x, w=w, batch=batch: L._two_pass(
            plan, out, x, w, batch, t),
        "shrink": lambda sp=sp, x=x, w=w, batch=batch, ws=ws: L._launch_shrink(
            sp, x, w, batch, ws, t),
        "expand": lambda ep=ep, ws=ws, w=w, batch=batch, out=out: L._launch_expand(
            ep, ws, w, batch, out, t),
    }
    for name, fn in fns.items():
        c = gpu_time_us(fn, dev)
        d = gpu_time_us(fn, dev, method="do_bench")
        g = graph_time_us(fn, dev)
        c2 = gpu_time_us(fn, dev)
        print(f"r={rank} {name:9s} clean {c:6.1f} do_bench {d:6.1f} graph {g:6.1f} "
              f"clean2 {c2:6.1f}", flush=True)
