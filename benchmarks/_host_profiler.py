"""Host µs of an eager add_lora (qkv, rank 16, 4 adapters, T=1) and of one torch launch
before and after the profiler has run in the process (GPU).

    python benchmarks/_host_profiler.py

Why ``bench_kernels`` times its host columns before its profiler-timed kernel columns:
CUPTI stays attached once the profiler has run, and every later launch pays for it.
"""

import torch

from lora_dispatch.bench.kernels import Problem, _build, _public
from lora_dispatch.bench.timing import gpu_time_us, host_time_us

dev = torch.device("cuda")
p = Problem("add_lora", 4096, 1, 16, 4, torch.bfloat16, dev)
batch, items = _build(p, 1)
fn = _public(p, batch, items[0])
x = torch.randn(1 << 20, device=dev)


def report(tag: str) -> None:
    add = [round(host_time_us(fn, dev, n=100, rounds=5), 2) for _ in range(3)]
    one = round(host_time_us(lambda: x.mul_(1.0), dev, n=200, rounds=5), 2)
    print(f"{tag:22s} add_lora {add} us, x.mul_ {one} us")


report("fresh")
gpu_time_us(fn, dev)
report("after events")
gpu_time_us(fn, dev, method="kernel")
report("after profiler")
report("after profiler again")
