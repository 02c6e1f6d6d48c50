"""Host time of the Gluon shrink's launch, piece by piece (H200, sessions 14 and 15).

    python benchmarks/_host_gluon.py

Times, per call (median of 3 rounds of 200), qkv rank 64, T=8192: building the two TMA
descriptors (Triton's checked constructor, and the launcher's unchecked ``x_descriptor``),
the shrink launched by Triton's JIT and by the fast launcher (native tier: descriptors encoded
in C), the whole ``_launch_shrink_gluon``, and ``add_lora`` on the Gluon plan and on the
Triton plan (``LORA_DISPATCH_GLUON=0``). Prints the launch tier and ``CUtensorMap`` reuse.
"""
import os

import torch

from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import host_time_us
from lora_dispatch.kernels.triton import launch as L
from lora_dispatch.kernels.triton.shrink_gluon_kernel import TensorDescriptor, x_descriptor


def per_call_us(fn):
    return host_time_us(fn, torch.device("cuda"), n=200, rounds=3)


os.environ["LORA_DISPATCH_GLUON"] = "1"
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
args = L._gluon_args(g, sp.k_split, x, w, batch, ws, t, ws.stride()[:3])
xd, ad = args[:2]
jit = L.shrink_gluon_kernel._fl_jit
L.shrink_gluon_kernel[g.grid](*args)  # registers the native variant
rows = {
    "descriptors_checked": per_call_us(lambda: (
        TensorDescriptor(x, [t, 4096], [4096, 1], xd.block_shape, xd.layout),
        TensorDescriptor(a, list(a.shape), [4096, 1], ad.block_shape, ad.layout))),
    "x_descriptor": per_call_us(lambda: x_descriptor(x, c.block_m, c.block_k)),
    "jit_launch_prebuilt": per_call_us(lambda: jit[g.grid](*args[:-1],
                                                           num_warps=c.num_warps)),
    "fast_launch_prebuilt": per_call_us(lambda: L.shrink_gluon_kernel[g.grid](*args)),
    "launch_shrink_gluon": per_call_us(lambda: L._launch_shrink_gluon(
        g, sp.k_split, x, w, batch, ws, t, ws.stride()[:3])),
    "add_lora_gluon": per_call_us(lambda: L.add_lora(out, x, w, batch)),
}
print("tier", L.shrink_gluon_kernel.launch_tier, "gluon_native", L.gluon_native(),
      "group launches", L._GGROUP.launches if L._GGROUP is not None else None)
os.environ["LORA_DISPATCH_GLUON"] = "0"
w.__dict__.pop("_triton_plans", None)
rows["add_lora_triton"] = per_call_us(lambda: L.add_lora(out, x, w, batch))
for k, v in rows.items():
    print(f"{k:24s} {v:8.1f} us")
