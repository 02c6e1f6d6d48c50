"""Host time of the Gluon shrink's launch, piece by piece (H200 session 14).

    python benchmarks/_host_gluon.py

Times, per call (median of 3 rounds of 200): building the two TMA descriptors, the JIT launch
with descriptors built beforehand, the whole ``_launch_shrink_gluon``, and ``add_lora`` on the
Gluon plan and on the Triton plan (``LORA_DISPATCH_GLUON=0``), qkv rank 64, T=8192.
"""
import os
import statistics
import time

import torch

from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.kernels.triton import launch as L
from lora_dispatch.kernels.triton.shrink_gluon_kernel import gluon_descriptors


def per_call_us(fn, n=200):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
        torch.cuda.synchronize()
    return statistics.median(out)


dev = torch.device("cuda")
t = 8192
p = Problem("add_lora", 4096, t, 64, 4, torch.bfloat16, dev)
batch, items = _build(p, 1)
w, x, _, out = items[0]
plan = L._pick(L.plan_for("add", w, t), x, w)
sp, g = plan.shrink, plan.shrink.gluon
ws = torch.empty(sp.split, 3, t, 64, device=dev)
c = g.cfg
a = w.lora_a.view(-1, 4096)
xd, ad = gluon_descriptors(x, a, c.block_m, c.block_k, c.block_r)
tm = batch.tile_map
rows = {
    "descriptors": per_call_us(lambda: gluon_descriptors(x, a, c.block_m, c.block_k,
                                                         c.block_r)),
    "jit_launch_prebuilt": per_call_us(lambda: L.shrink_gluon_kernel[g.grid](
        xd, ad, x, ws, w.ranks, w.scalings, batch.sorted_tokens, tm, t, 4096, w.num_slots,
        tm.shape[2], sp.k_split, x.stride(0), 1, *ws.stride()[:3], *g.cx,
        num_warps=c.num_warps)),
    "launch_shrink_gluon": per_call_us(lambda: L._launch_shrink_gluon(
        g, sp.k_split, x, w, batch, ws, t, ws.stride()[:3])),
    "add_lora_gluon": per_call_us(lambda: L.add_lora(out, x, w, batch)),
}
os.environ["LORA_DISPATCH_GLUON"] = "0"
w.__dict__.pop("_triton_plans", None)
rows["add_lora_triton"] = per_call_us(lambda: L.add_lora(out, x, w, batch))
for k, v in rows.items():
    print(f"{k:24s} {v:8.1f} us")
