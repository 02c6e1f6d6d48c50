"""Host time of native launches with tensor descriptors (H200, fifteenth session).

    python benchmarks/_host_desc.py [--json PATH]

A small shrink (qkv rank 64, T=128, one adapter) keeps the GPU ahead of the host, so the
time per call is the host's. Per call (median of 5 rounds of 300, arguments prebuilt):
the pointer shrink (``shrink_kernel``) through the native tier; the Gluon shrink through the
native tier with the same ``x`` every call (both ``CUtensorMap`` kept) and alternating two
``x`` tensors (``x``'s map encoded every call); the Gluon shrink through Triton's JIT; and
building ``x``'s descriptor. Prints the encode counts that show which case re-encoded.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from lora_dispatch.bench.timing import host_time_us


def per_call_us(fn) -> float:
    return host_time_us(fn, torch.device("cuda"), n=300, rounds=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    os.environ["LORA_DISPATCH_GLUON"] = "1"
    import lora_dispatch as ld
    from lora_dispatch.kernels.triton import launch as L
    from lora_dispatch.kernels.triton.shrink_gluon_kernel import x_descriptor
    from lora_dispatch.launchers import native

    dev = torch.device("cuda")
    t, k = 128, 4096
    w = ld.LoRAWeights(2, k, (4096, 1024, 1024), 64, dtype=torch.bfloat16, device=dev)
    w.load(0, [torch.randn(64, k, device=dev) / 64] * 3,
           [torch.randn(o, 64, device=dev) / 8 for o in w.out_features], 1.0)
    batch = ld.LoRABatch.from_segments([t], [0], device=dev)
    xs = [torch.randn(t, k, device=dev, dtype=torch.bfloat16) for _ in range(2)]
    p = L._shrink_plan(w, t, atomic=False)
    g = p.alt
    ys = torch.empty(max(p.split, g.split), 3, t, 64, device=dev)
    yst = ys.stride()[:3]
    pa = L._shrink_args(p, xs[0], xs[0].stride(), w, batch, ys, t, yst)
    ga = [L._gluon_args(g.gluon, g.k_split, x, w, batch, ys, t, yst) for x in xs]
    sk, gk = L.shrink_kernel, L.shrink_gluon_kernel
    alt = iter(range(1 << 62))
    mod = native.load()

    def gluon_alternating():
        gk[g.gluon.grid](*ga[next(alt) & 1])

    rows = {
        "shrink_native": per_call_us(lambda: sk[p.grid](*pa, *p.cx, num_warps=p.num_warps,
                                                        num_stages=p.num_stages)),
    }
    e0 = None
    for name, fn in (("gluon_native_same_x", lambda: gk[g.gluon.grid](*ga[0])),
                     ("gluon_native_two_x", gluon_alternating)):
        fn()
        nat = gk._fl_ns["_fl_nat"]
        e0 = mod.fl_encodes(nat)
        rows[name] = per_call_us(fn)
        rows[name + "_encodes"] = mod.fl_encodes(nat) - e0
    jit = gk._fl_jit
    rows["gluon_jit"] = per_call_us(lambda: jit[g.gluon.grid](*ga[0][:-1],
                                                               num_warps=ga[0][-1]))
    rows["x_descriptor"] = per_call_us(lambda: x_descriptor(xs[0], g.gluon.cfg.block_m,
                                                              g.gluon.cfg.block_k))
    rows["gluon_args"] = per_call_us(lambda: L._gluon_args(g.gluon, g.k_split, xs[0], w,
                                                           batch, ys, t, yst))
    rows["tiers"] = (sk.launch_tier, gk.launch_tier)
    for key, v in rows.items():
        print(f"{key:28s} {v:8.2f}" if isinstance(v, float) else f"{key:28s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "commit": os.environ.get("LORA_DISPATCH_COMMIT"), "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
