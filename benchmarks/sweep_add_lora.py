"""Two-pass add_lora: time each shrink split-K on prefill shapes (GPU), cold L2 (read flush)."""

from __future__ import annotations

import torch

from lora_dispatch.bench.kernels import Problem, _build, min_bytes
from lora_dispatch.bench.timing import copy_bandwidth_gbs, gpu_time_us
from lora_dispatch.kernels.triton import launch as L


def main() -> int:
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    for t, rank in ((2048, 16), (8192, 16), (2048, 64), (8192, 64)):
        p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
        batch, items = _build(p, 1)
        w, x, _, out = items[0]
        default = L.plan_for("add", w, t)
        res = []
        for split in (1, 2, 4, 8):
            plan = L.plan_for("add", w, t, "two_pass", split)
            fn = (lambda plan=plan, out=out, x=x, w=w, batch=batch, t=t:
                  L._two_pass(plan, out, x, w, batch, t))
            us = gpu_time_us(fn, dev)
            res.append(f"split{split}={us:.1f}us({100 * min_bytes(p) / us / 1e3 / copy:.0f}%)")
        print(f"T={t} r={rank} default split={default.shrink.split} " + " ".join(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
