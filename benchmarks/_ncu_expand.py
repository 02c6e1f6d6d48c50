"""Nsight Compute driver: the qkv prefill expand at rank 16 and 64, Triton and Gluon kernels.

    ncu -k regex:"expand" --launch-skip 0 --launch-count 8 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
        --section LaunchStats --section WarpStateStats --section SchedulerStats \\
        python benchmarks/_ncu_expand.py

Launches, twice each in this order, the public qkv expand (bf16, hidden 4096, 4 adapters in
consecutive segments, T=8192, ``bench_kernels``' inputs): rank 16 Triton, rank 16 Gluon
(forced), rank 64 Gluon (the registry's pick), rank 64 Triton (Gluon off). Where the
rank-64 expand loses ~8% against rank 16 (``ncu-expand-qkv-...txt``, thirtieth session in
``docs/kernels.md``).
"""
import os

import torch

from lora_dispatch.bench.kernels import Problem, _build, _call
from lora_dispatch.kernels import triton as impl

dev = torch.device("cuda")
for rank, gluon in ((16, "0"), (16, "1"), (64, "auto"), (64, "0")):
    os.environ["LORA_DISPATCH_GLUON_EXPAND"] = gluon  # read when the plan is built
    p = Problem("qkv_expand", 4096, 8192, rank, 4, torch.bfloat16, dev)
    batch, (item,) = _build(p, 1)
    fn = _call(p, impl, batch, item)
    plan = impl.plan_for("expand", item[0], p.t)
    print(f"rank {rank} gluon {gluon}: grid {plan.grid} gluon plan {plan.gluon}", flush=True)
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
