"""Nsight Compute driver: the qkv rank-64 prefill shrink next to cuBLAS and the dense Gluon
prototype on the same GEMM.

    ncu -k regex:"shrink|nvjet|gemm" --launch-skip 2 --launch-count 2 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
        --section LaunchStats --section WarpStateStats --section SchedulerStats \\
        python benchmarks/_ncu_shrink.py

Runs, three times each: the shrink ``add_lora`` launches (workspace mode, bf16, hidden 4096,
qkv at rank 64, 4 adapters, T=8192: the Gluon kernel where the registry picks it), cuBLAS's
``x @ A^T`` with ``A [192, 4096]``, and ``probe_shrink_gluon.py``'s dense kernel in the
shipped Gluon tiling (``ncu-shrink-qkv-r64-...txt``, thirteenth and fourteenth sessions in
``docs/kernels.md``).
"""
import importlib.util
import pathlib

import torch

from lora_dispatch.bench.kernels import add_shrink_launch

dev = torch.device("cuda")
t, k = 8192, 4096
launch, plan = add_shrink_launch(t, 64, dev)
x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
a = torch.randn(192, k, device=dev, dtype=torch.bfloat16)
print("shrink plan", plan.grid, plan.cx, plan.gluon, flush=True)
path = pathlib.Path(__file__).with_name("probe_shrink_gluon.py")
spec = importlib.util.spec_from_file_location("probe_shrink_gluon", path)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)
xd, ad = probe._descs(x, a, 64, 64, 64)
y = torch.empty(t, 192, device=dev)
for _ in range(3):
    launch()
    torch.matmul(x, a.T)
    probe.gemm_ws_kernel[(t // 64, 1)](xd, ad, y, t, 192, k, NB=3, STAGES=6, num_warps=4)
torch.cuda.synchronize()
