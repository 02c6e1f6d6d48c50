"""Diagnostic: how the L2 eviction before each timed call and the timer change the numbers.

    python benchmarks/_diag_flush.py [--json PATH]

Per case, alternating in one process: CUDA events after the old eviction (``int32.sum(
dtype=int64)``, which writes a 512 MB int64 copy first, so L2 ends dirty), after the new
one (one read-only reduction), and the profiler's kernel time after the new one.
"""

import argparse

import torch

from lora_dispatch.bench import timing
from lora_dispatch.bench.kernels import Problem, _build, _public, min_bytes
from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, gpu_time_us, write_json

ap = argparse.ArgumentParser()
ap.add_argument("--json", default=None)
args = ap.parse_args()
dev = torch.device("cuda")
old_buf = torch.ones(64 << 20, dtype=torch.int32, device=dev)
new_evict = timing._evict


def old_evict(buf):
    return old_buf.sum(dtype=torch.int64)


cases = {}
x = torch.randn(8192, 4096, dtype=torch.bfloat16, device=dev)
cases["x.sum(1) 64 MB"] = (lambda: x.sum(1), x.numel() * 2)
y = torch.empty_like(x)
cases["copy 64 MB"] = (lambda: y.copy_(x), 2 * x.numel() * 2)
for op, rank in (("shrink", 16), ("expand", 64), ("qkv_expand", 64), ("add_lora", 16),
                 ("add_lora", 64)):
    p = Problem(op, 4096, 8192, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    fn = _public(p, batch, items[0])
    cases[f"{op} r{rank} T=8192"] = (fn, min_bytes(p))

copy_old = copy_new = None
rows = []
for rnd in range(2):
    timing._evict = old_evict
    copy_old = copy_bandwidth_gbs(dev)
    timing._evict = new_evict
    copy_new = copy_bandwidth_gbs(dev)
    copy_kernel = copy_bandwidth_gbs(dev, method="kernel")
    print(f"round {rnd}: copy 1 GiB: old flush {copy_old:.0f} GB/s, new {copy_new:.0f}, "
          f"kernel {copy_kernel:.0f}", flush=True)
    for name, (fn, nbytes) in cases.items():
        timing._evict = old_evict
        a = gpu_time_us(fn, dev)
        timing._evict = new_evict
        b = gpu_time_us(fn, dev)
        k = gpu_time_us(fn, dev, method="kernel")
        row = dict(round=rnd, case=name, bytes=nbytes, old_flush_us=a, new_flush_us=b,
                   kernel_us=k, pct_old=100 * nbytes / a / 1e3 / copy_old,
                   pct_new=100 * nbytes / b / 1e3 / copy_new,
                   pct_kernel=100 * nbytes / k / 1e3 / copy_kernel)
        rows.append(row)
        print(f"  {name:22s} events, old flush {a:6.1f} us ({row['pct_old']:4.1f}%)  "
              f"new flush {b:6.1f} ({row['pct_new']:4.1f}%)  kernel {k:6.1f} "
              f"({row['pct_kernel']:4.1f}%)", flush=True)
if args.json:
    write_json(args.json, {**env_record(dev), "copy_gbs": copy_new}, rows)
