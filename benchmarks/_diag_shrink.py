"""Diagnostic: timing methods on read-heavy prefill kernels (kept for reference)."""

import torch

from lora_dispatch.bench.kernels import Problem, _build, min_bytes
from lora_dispatch.bench.timing import copy_bandwidth_gbs, gpu_time_us, graph_time_us
from lora_dispatch.kernels.triton import launch as L

dev = torch.device("cuda")
copy = copy_bandwidth_gbs(dev)
print(f"copy bandwidth {copy:.0f} GB/s")
p = Problem("shrink", 4096, 8192, 16, 4, torch.bfloat16, dev)
batch, items = _build(p, 1)
w, x, _, _ = items[0]
a = torch.randn(48, 4096, device=dev, dtype=torch.bfloat16)
plan = L._shrink_plan(w, 8192, atomic=False)
y = torch.empty((plan.split, 3, 8192, 16), device=dev)
cases = {
    "cublas x@A^T [8192,4096]x[4096,48]": (lambda: torch.mm(x, a.T), x.nbytes),
    "x.sum(1) (read only)": (lambda: x.sum(1), x.nbytes),
    "lora shrink kernel (add_lora mode)": (lambda: L._launch_shrink(plan, x, w, batch, y, 8192),
                                           min_bytes(p)),
}
for name, (fn, nbytes) in cases.items():
    out = []
    for method in ("do_bench", "clean"):
        us = gpu_time_us(fn, dev, method=method)
        out.append(f"{method} {us:6.1f} us {100 * nbytes / us / 1e3 / copy:5.1f}%")
    g = graph_time_us(fn, dev)
    out.append(f"graph {g:6.1f} us {100 * nbytes / g / 1e3 / copy:5.1f}%")
    print(f"{name:38s} " + " | ".join(out), flush=True)
