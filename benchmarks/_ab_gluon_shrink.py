"""Public ``lora_shrink`` at T=8192 as the environment picks it (GPU): run once per
``LORA_DISPATCH_GLUON`` value, alternating, since plans read it when they are built.

    for g in 0 1 0 1; do LORA_DISPATCH_GLUON=$g python benchmarks/_ab_gluon_shrink.py; done

Prints the setting, the rank, three cold-L2 event medians and the profiler's kernel time
(bf16, hidden 4096, 4 adapters, one segment each).
"""

from __future__ import annotations

import os
import statistics

import torch

import lora_dispatch as ld
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import gpu_time_us, kernel_spans_us


def main() -> int:
    dev = torch.device("cuda")
    for rank in (16, 64):
        p = Problem("shrink", 4096, 8192, rank, 4, torch.bfloat16, dev)
        batch, items = _build(p, 1)
        w, x, _, _ = items[0]

        def fn(x=x, w=w, batch=batch):
            return ld.lora_shrink(x, w, batch)

        us = sorted(gpu_time_us(fn, dev, warmup_ms=5, rep_ms=30) for _ in range(3))
        k = statistics.median(kernel_spans_us(fn, dev))
        print(os.environ.get("LORA_DISPATCH_GLUON"), rank, [round(u, 2) for u in us],
              "kernel", round(k, 2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
