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

from lora_dispatch.bench.kernels import add_shrink_launch

dev = torch.device("cuda")
t, k = 8192, 4096
launch, plan = add_shrink_launch(t, 64, dev)
x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
a = torch.randn(192, k, device=dev, dtype=torch.bfloat16)
print("shrink plan", plan.grid, plan.cx, flush=True)
for _ in range(3):
    launch()
    torch.matmul(x, a.T)
torch.cuda.synchronize()
