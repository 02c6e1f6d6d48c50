"""Probe: prefill ``add_lora`` against its own parts and the public shrink + expand pair.

For prefill shapes ``layer:rank:T`` (hidden 4096, bf16, 4 adapters in segments; layer
``qkv`` 4096 -> 4096+1024+1024, ``one`` 4096 -> 4096, ``gate_up`` 4096 -> 14336+14336),
times by events (cold L2) and by the profiler's kernel span, and lists each kernel's
duration:

- ``add_lora``: the public op (automatic plan);
- ``split1`` / ``split2`` / ``split4``: ``add_lora``'s two-pass plan with that many K
  splits of the shrink (partial products the expand sums);
- ``pub_pair``: ``lora_shrink`` (atomic split-K into a zeroed ``y``) then ``lora_expand``;
- ``pub_shrink`` / ``pub_expand``: each alone.

    python benchmarks/probe_add_prefill.py [--shapes qkv:64:2048,...] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import torch

from lora_dispatch.bench.kernels import Problem, _build, min_bytes
from lora_dispatch.bench.timing import (
    call_activities,
    copy_bandwidth_gbs,
    env_record,
    gpu_time_us,
    write_json,
)

SHAPES = ("qkv:64:2048,qkv:32:2048,qkv:16:2048,one:64:2048,gate_up:64:2048,qkv:64:1536,"
          "qkv:64:3072,qkv:64:4096,qkv:64:8192")
OUTS = {"qkv": (4096, 1024, 1024), "one": (4096,), "gate_up": (14336, 14336)}


def kernel_breakdown(fn, device: torch.device, n: int = 10) -> dict[str, float]:
    """Median duration (µs) per kernel name over ``n`` calls of ``fn``, each after an L2
    eviction (:func:`~lora_dispatch.bench.timing.call_activities`)."""
    per = defaultdict(list)
    for grp in call_activities(fn, device, n):
        for e in grp:
            per[e.name[:40]].append(e.time_range.end - e.time_range.start)
    return {k: round(statistics.median(v), 2) for k, v in per.items()}


def _variants(w, x, out, batch, y_fixed) -> dict:
    import lora_dispatch as ld
    from lora_dispatch.kernels.triton import launch as L

    fns = {
        "add_lora": lambda: ld.add_lora(out, x, w, batch),
        "pub_pair": lambda: ld.lora_expand(ld.lora_shrink(x, w, batch), w, batch, out),
        "pub_shrink": lambda: ld.lora_shrink(x, w, batch),
        "pub_expand": lambda: ld.lora_expand(y_fixed, w, batch, out),
    }
    for s in (1, 2, 4):
        fns[f"split{s}"] = lambda s=s: L.add_lora_two_pass(out, x, w, batch, split_k=s)
    return fns


def main() -> None:
    import lora_dispatch as ld

    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    rows: list[dict] = []
    for spec in args.shapes.split(","):
        layer, rank, t = spec.split(":")
        rank, t = int(rank), int(t)
        p = Problem("add_lora", 4096, t, rank, args.adapters, torch.bfloat16, dev,
                    outs=OUTS[layer])
        batch, ((w, x, _, out),) = _build(p, 1)
        nbytes = min_bytes(p)
        y_fixed = ld.lora_shrink(x, w, batch)
        orig = out.clone()
        ref = out.clone()
        ld.add_lora(ref, x, w, batch)
        scale = ref.float().abs().max().item()
        fns = _variants(w, x, out, batch, y_fixed)
        for name, fn in fns.items():
            err = None
            if name not in ("pub_shrink", "pub_expand"):
                out.copy_(orig)
                fn()
                err = (out.float() - ref.float()).abs().max().item() / scale
                if not err < 2e-2:  # a few bf16 ulps of the largest output
                    print(f"{spec} {name}: wrong result (max error {err:.3g} of max |out|)",
                          flush=True)
                    continue
            ev = gpu_time_us(fn, dev)
            kt = gpu_time_us(fn, dev, method="kernel")
            kb = kernel_breakdown(fn, dev)
            gbs = nbytes / ev / 1e3
            row = dict(shape=spec, T=t, rank=rank, variant=name, events_us=round(ev, 2),
                       kernel_us=round(kt, 2), pct_copy=round(100 * gbs / copy, 1),
                       pct_copy_kernel=round(100 * nbytes / kt / 1e3 / copy, 1),
                       kernels=kb, max_err=err)
            rows.append(row)
            print(f"{spec:16s} {name:10s} ev {ev:7.2f} k {kt:7.2f} "
                  f"{row['pct_copy']:5.1f}% · {row['pct_copy_kernel']:5.1f}%  err {err}  {kb}",
                  flush=True)
    if args.json:
        meta = env_record(dev)
        meta["copy_gbs"] = copy
        write_json(args.json, meta, rows)


if __name__ == "__main__":
    main()
