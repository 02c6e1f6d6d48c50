"""Two-pass add_lora: time each shrink split-K (GPU).

    python benchmarks/sweep_add_lora.py [--decode]

Prefill shapes (T = 2048, 8192) are timed with a cold L2 (read flush); ``--decode``
(T = 1, 16, 64, 256) replays each split from a CUDA graph, the regime decode runs in.
"""

from __future__ import annotations

import argparse

import torch

from lora_dispatch.bench.kernels import Problem, _build, min_bytes
from lora_dispatch.bench.timing import copy_bandwidth_gbs, gpu_time_us, graph_time_us
from lora_dispatch.kernels.triton import launch as L


def _row(t: int, rank: int, decode: bool, dev: torch.device, copy: float) -> str:
    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    default = L.plan_for("add", w, t)
    res = []
    for split in (1, 2, 4, 8, 16):
        plan = L.plan_for("add", w, t, "two_pass", split)
        fn = (lambda plan=plan: L._two_pass(plan, out, x, w, batch, t))
        us = graph_time_us(fn, dev) if decode else gpu_time_us(fn, dev)
        res.append(f"split{plan.shrink.split}={us:.2f}us"
                   f"({100 * min_bytes(p) / us / 1e3 / copy:.0f}%)")
    return f"T={t} r={rank} default split={default.shrink.split} " + " ".join(res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--decode", action="store_true", help="decode T, CUDA-graph replay")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    tokens = (1, 16, 64, 256) if args.decode else (2048, 8192)
    for rank in (16, 64):
        for t in tokens:
            print(_row(t, rank, args.decode, dev, copy), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
