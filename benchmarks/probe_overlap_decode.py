"""Decode add_lora: the two-pass launches against one launch with per-tile flags (GPU).

    python benchmarks/probe_overlap_decode.py [--json PATH] [--shapes 1:16,16:16,64:16]
        [--configs "lag,bm,bns,bk,rb,split,ebn,br,ncol,prefetch,warps,stages;..."]

At decode ``add_lora`` is two launches (a split-K shrink into a workspace, then the expand
with programmatic dependent launch), ~5.5-7 us of GPU time under a CUDA graph and two
driver launches of host time per eager call. ``overlap_kernel`` (one launch; each token
tile's expand programs wait at a per-tile flag for that tile's shrink programs) was only
measured at prefill. This times, per ``T:rank`` (qkv 4096 -> 4096 + 1024 + 1024, bf16, 4
adapters round-robin), the shipped ``add_lora`` and overlap configs built from decode-sized
tilings: GPU time per call replayed from a CUDA graph of 20 calls, and eager host time per
call; each config is checked against the shipped output.
"""

from __future__ import annotations

import torch
from probe_overlap import _label, live_configs, parse_configs

from lora_dispatch.bench.kernels import probe_main
from lora_dispatch.bench.timing import graph_time_us, host_time_us

_CONFIGS = ";".join((
    # lag, bm, bns, bk, rb, split, ebn, br, ncol, prefetch, warps, stages
    "64,16,{r},128,1,16,64,{r},1,0,4,3",
    "64,16,{r},128,3,16,64,{r},1,0,4,3",
    "64,16,{r},256,3,16,64,{r},1,0,4,2",
    "64,16,{r},128,3,8,64,{r},1,0,4,3",
    "64,16,{r},64,3,32,64,{r},1,0,4,3",
    "64,16,{r},128,3,16,128,{r},1,0,4,3",
    "64,16,{r},128,3,16,64,{r},2,0,4,3",
    "1,16,{r},128,3,16,64,{r},1,0,4,3",
))


def _spec(spec: str, dev: torch.device, copy: float | None, rows: list[dict], args) -> None:
    t, rank = map(int, spec.split(":"))
    cands = parse_configs((args.configs or _CONFIGS).replace("{r}", str(max(16, rank))), rank)
    _, live = live_configs(t, rank, dev, cands)
    for rnd in range(args.rounds):
        for cfg, fn, err in live:
            g = graph_time_us(fn, dev) if dev.type == "cuda" else float("nan")
            h = host_time_us(fn, dev, n=100, rounds=5)
            rows.append(dict(T=t, rank=rank, round=rnd, config=_label(cfg), graph_us=g,
                             host_us=h, max_diff_vs_shipped=err))
            print(f"T={t} r={rank} {_label(cfg):78s} graph {g:6.2f} us  host {h:6.2f} us"
                  f"  diff {err:.3g}", flush=True)


def main(argv: list[str] | None = None) -> int:
    def extra(ap):
        ap.add_argument("--configs", default="",
                        help="'lag,bm,bns,bk,rb,split,ebn,br,ncol,prefetch,warps,stages;...' "
                             "({r} = the rank)")
        ap.add_argument("--rounds", type=int, default=2)

    return probe_main(argv, __doc__, "1:16,16:16,64:16,1:64,64:64", _spec, extra)


if __name__ == "__main__":
    raise SystemExit(main())
