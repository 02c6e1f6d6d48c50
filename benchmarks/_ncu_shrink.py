"""Nsight Compute driver: the qkv rank-64 prefill shrink next to cuBLAS on the same GEMM.

    ncu -k regex:"shrink|nvjet|gemm" --launch-skip 2 --launch-count 2 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
        --section LaunchStats --section WarpStateStats --section SchedulerStats \\
        python benchmarks/_ncu_shrink.py

Runs, three times each: the shrink ``add_lora`` launches (workspace mode, bf16, hidden 4096,
qkv at rank 64, 4 adapters, T=8192) and cuBLAS's ``x @ A^T`` with ``A [192, 4096]``
(``ncu-shrink-qkv-r64-...txt``, thirteenth session in ``docs/kernels.md``).
"""
import torch

from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.kernels.triton import launch as L

dev = torch.device("cuda")
t, k = 8192, 4096
p = Problem("add_lora", k, t, 64, 4, torch.bfloat16, dev)
batch, items = _build(p, 1)
w, x, _, _ = items[0]
plan = L.plan_for("add", w, t).shrink
ws = torch.empty((plan.split, w.num_slices, t, w.max_rank), device=dev)
a = torch.randn(192, k, device=dev, dtype=torch.bfloat16)
print("shrink plan", plan.grid, plan.cx, flush=True)
for _ in range(3):
    L._launch_shrink(plan, x, w, batch, ws, t)
    torch.matmul(x, a.T)
torch.cuda.synchronize()
