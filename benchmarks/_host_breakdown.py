"""Host time of one eager add_lora (qkv 4096 -> 6144, rank 16, 4 adapters), layer by layer.

    python benchmarks/_host_breakdown.py [--json PATH]

Each row peels one layer off the call: the public op (validation + dispatch), the backend
function, the two-pass launch body (workspace + argument assembly), the two kernel launches
with pre-assembled arguments, and one launch alone. Differences between rows are the cost
of each layer. Median over rounds of back-to-back calls (GPU synchronised between rounds).
"""

import argparse

import torch

import lora_dispatch as ld
from lora_dispatch import ops
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import env_record, host_time_us, write_json
from lora_dispatch.kernels.triton import launch as L

ap = argparse.ArgumentParser()
ap.add_argument("--json", default=None)
args = ap.parse_args()
dev = torch.device("cuda")


def cases(t: int) -> tuple[str, dict]:
    p = Problem("add_lora", 4096, t, 16, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    impl = ops._impl(w)
    plan = L.plan_for("add", w, t)
    sp, ep = plan.shrink, plan.expand
    s, r = w.num_slices, w.max_rank
    ws = L._workspace(sp.split * s * t * r, x)
    ys = (s * t * r, t * r, r, 1)
    tm = batch.tile_map
    xs, os_ = x.stride(), out.stride()
    sargs = (x, w.lora_a, ws, w.ranks, w.scalings, batch.sorted_tokens, tm,
             t, w.in_features, w.num_slots, tm.shape[2], sp.k_split, sp.nb,
             xs[0], xs[1], ys[0], ys[1], ys[2], *sp.cx)
    eargs = (ws, w.lora_b, out, w.ranks, w.slice_bounds, batch.sorted_tokens, tm,
             t, w.num_slots, tm.shape[2], w.total_out, ep.nb,
             ys[0], ys[1], ys[2], ys[3], os_[0], os_[1], *ep.cx)
    sk, ek = L.shrink_kernel, L.expand_kernel

    def two_launches():
        sk[sp.grid](*sargs, num_warps=sp.num_warps, num_stages=sp.num_stages)
        ek[ep.grid](*eargs, num_warps=ep.num_warps, num_stages=ep.num_stages)

    def one_launch():
        sk[sp.grid](*sargs, num_warps=sp.num_warps, num_stages=sp.num_stages)

    return getattr(sk, "launch_tier", "?"), {
        "public": lambda: ld.add_lora(out, x, w, batch),
        "backend": lambda: impl.add_lora(out, x, w, batch),
        "two_pass": lambda: L._two_pass(plan, out, x, w, batch, t),
        "two_launches": two_launches,
        "one_launch": one_launch,
        "fast_ok": lambda: ops._fast_ok(out, x, w, batch),
        "workspace": lambda: L._workspace(sp.split * s * t * r, x),
    }


rows = []
for t in (1, 64, 2048):
    tier, fns = cases(t)
    row = {"T": t, "tier": tier}
    for name, fn in fns.items():
        row[name] = round(host_time_us(fn, dev, n=400), 2)
    rows.append(row)
    print(row, flush=True)
if args.json:
    write_json(args.json, env_record(dev), rows)
