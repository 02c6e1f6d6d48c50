"""Two-pass add_lora: time each shrink split-K (GPU).

    python benchmarks/sweep_add_lora.py [--decode] [--adapters 1,4,16] [--json PATH]

Prefill shapes (T = 2048, 8192) are timed with a cold L2 (read flush); ``--decode``
(T = 1, 16, 64, 256) replays each split from a CUDA graph, the regime decode runs in.
Every row also times the shipped plan's shrink and expand alone (same timer), so a slow
split shows which launch it slows.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from lora_dispatch.bench.kernels import Problem, _build, min_bytes
from lora_dispatch.bench.timing import (
    copy_bandwidth_gbs,
    env_record,
    gpu_time_us,
    graph_time_us,
    write_json,
)
from lora_dispatch.kernels.triton import launch as L


def _row(t: int, rank: int, adapters: int, decode: bool, dev: torch.device,
         copy: float) -> dict:
    p = Problem("add_lora", 4096, t, rank, adapters, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    timer = graph_time_us if decode else gpu_time_us
    default = L.plan_for("add", w, t)
    res: dict[str, float | None] = {}
    for split in (1, 2, 4, 8, 16):
        plan = L.plan_for("add", w, t, "two_pass", split)
        res[f"split{plan.shrink.split}"] = timer(
            lambda plan=plan: L._two_pass(plan, out, x, w, batch, t), dev)
    sp = L._pick(default, x, w, capturing=decode)
    ws = torch.zeros((sp.shrink.split, w.num_slices, t, w.max_rank), device=dev)
    res["shrink_alone"] = timer(
        lambda: L._launch_shrink(sp.shrink, x, w, batch, ws, t, sp.ys), dev)
    res["expand_alone"] = timer(
        lambda: L._launch_expand(sp.expand, ws, w, batch, out, t, sp.ys), dev)
    nbytes = min_bytes(p)
    pct = {k: round(100 * nbytes / v / 1e3 / copy, 1) for k, v in res.items()
           if v and k.startswith("split")}
    row = dict(T=t, rank=rank, adapters=adapters, default_split=default.shrink.split,
               bytes=nbytes, **{k: None if v is None else round(v, 2) for k, v in res.items()},
               pct_copy=pct)
    print(f"T={t} r={rank} a={adapters} default=split{default.shrink.split} " + " ".join(
        f"{k}={v:.2f}" for k, v in res.items() if v is not None), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--decode", action="store_true", help="decode T, CUDA-graph replay")
    ap.add_argument("--adapters", default="4", help="comma-separated adapter counts")
    ap.add_argument("--ranks", default="16,64")
    ap.add_argument("--tokens", default="", help="comma-separated T (default by --decode)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    tokens = (tuple(map(int, args.tokens.split(","))) if args.tokens
              else (1, 16, 64, 256) if args.decode else (2048, 8192))
    rows = [_row(t, rank, a, args.decode, dev, copy) for rank, a, t in itertools.product(
        map(int, args.ranks.split(",")), map(int, args.adapters.split(",")), tokens)]
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
