"""Diagnostic: decode timings with and without the GPU spin queued before each timed call.

    python benchmarks/_diag_busy.py [--json PATH]

Alternating in one process, per case: ``gpu_time_us`` (clean) and ``graph_time_us`` with
``timing._busy`` disabled (the timer before the ninth session) and enabled, and the
profiler's kernel time. Gaps the host opens inside the timed interval show as the
difference.
"""

import argparse

import torch

from lora_dispatch.bench import timing
from lora_dispatch.bench.kernels import Problem, _build, _public
from lora_dispatch.bench.timing import env_record, gpu_time_us, graph_time_us, write_json

ap = argparse.ArgumentParser()
ap.add_argument("--json", default=None)
args = ap.parse_args()
dev = torch.device("cuda")
busy = timing._busy
rows = []
for op, t in (("shrink", 1), ("shrink", 64), ("expand", 1), ("add_lora", 1), ("add_lora", 64)):
    p = Problem(op, 4096, t, 16, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    fn = _public(p, batch, items[0])
    for rnd in range(2):
        res = {}
        for name, b in (("off", lambda us=0: None), ("on", busy)):
            timing._busy = b
            res[f"clean_{name}"] = gpu_time_us(fn, dev, warmup_ms=5, rep_ms=20)
            res[f"graph_{name}"] = graph_time_us(fn, dev)
        timing._busy = busy
        res["kernel"] = gpu_time_us(fn, dev, method="kernel")
        rows.append(dict(op=op, T=t, rank=16, round=rnd, **res))
        print(f"{op:9s} T={t:3d} round {rnd}: " + " ".join(f"{k} {v:6.2f}" for k, v in res.items()),
              flush=True)
if args.json:
    write_json(args.json, env_record(dev), rows)
