"""Expand configs for wide ranks: the rank step ``BR`` (GPU).

    python benchmarks/probe_expand_rank.py [--json PATH] [--shapes 8192:128,2048:128,64:128]
        [--configs "bm,bn,br,warps,stages,ncol,prefetch;..."] [--rounds N]

The shipped expand caps its rank step at 64, so above rank 64 every column block loops over
the rank and re-reads its ``y`` rows (and the split partial products) per block; compiled for
sm_90 the rank-128 prefill variant takes 223 registers where one 128-wide step takes 126.
Per shape (qkv 4096/1024/1024, bf16, 4 adapters) this times, for the shipped expand config
and each given one: the expand alone and the whole two-pass ``add_lora`` with that expand
(shrink as shipped), checked against the shipped ``add_lora``. Prefill ``T`` (> 256) is timed
with a cold L2, decode ``T`` as CUDA-graph replay. Alternating rounds.
"""

from __future__ import annotations

import torch

from lora_dispatch.bench.kernels import Problem, _build, min_bytes, probe_main, round_median
from lora_dispatch.bench.timing import gpu_time_us, graph_time_us
from lora_dispatch.devices import configs as C
from lora_dispatch.devices import current
from lora_dispatch.kernels.triton import launch as L


def parse(spec: str) -> list[C.ExpandConfig]:
    out = []
    for item in filter(None, spec.split(";")):
        bm, bn, br, warps, stages, ncol, pf = map(int, item.split(","))
        out.append(C.ExpandConfig(bm, bn, br, warps, stages, ncol, bool(pf)))
    return out


def shape(t: int, rank: int, dev: torch.device, copy: float, rows: list[dict],
          configs: list[C.ExpandConfig], rounds: int) -> None:
    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, y, out = items[0]
    default = C.expand_config(current(dev), t, w.total_out, w.max_rank, 2)
    pristine = out.clone()
    ref = pristine.clone()
    L.add_lora(ref, x, w, batch)
    ref_e = pristine.clone()
    L.expand(y, w, batch, ref_e)
    live = []
    for cfg in [default] + [c for c in configs if c != default]:
        try:
            plan = L._two_pass_plan(w, t, expand_cfg=cfg)
            ep = L._expand_plan(w, t, 1, cfg=cfg)
            chk = pristine.clone()
            L._two_pass(plan, chk, x, w, batch, t)
            err = (chk.float() - ref.float()).abs().max().item()
            chk = pristine.clone()
            L._launch_expand(ep, y.unsqueeze(0), w, batch, chk, t)
            err_e = (chk.float() - ref_e.float()).abs().max().item()
        except Exception as exc:  # a config that fails to compile is reported and skipped
            print(f"T={t} r={rank} {cfg} failed: {exc!r}"[:240], flush=True)
            continue
        live.append((cfg, plan, ep, err, err_e))
    timer = graph_time_us if t <= 256 and dev.type == "cuda" else gpu_time_us
    y4 = y.unsqueeze(0)
    for rnd in range(rounds):
        for cfg, plan, ep, err, err_e in live:
            e_us = timer(lambda ep=ep: L._launch_expand(ep, y4, w, batch, out, t), dev)
            a_us = timer(lambda plan=plan: L._two_pass(plan, out, x, w, batch, t), dev)
            row = dict(T=t, rank=rank, round=rnd, default=cfg == default, expand_us=e_us,
                       add_us=a_us,
                       add_pct_copy=(100 * min_bytes(p) / a_us / 1e3 / copy if copy
                                     else float("nan")),
                       max_diff_add=err, max_diff_expand=err_e,
                       timing="graph" if t <= 256 else "cold-L2 events", **cfg.__dict__)
            rows.append(row)
            print(f"T={t} r={rank} {'*' if cfg == default else ' '} {tuple(cfg.__dict__.values())}"
                  f": expand {e_us:7.2f} us  add_lora {a_us:7.2f} us  diff {err:.3g}/{err_e:.3g}",
                  flush=True)
    for cfg, *_ in live:
        for key in ("expand_us", "add_us"):
            med = round_median(rows, key, T=t, rank=rank, **cfg.__dict__)
            print(f"T={t} r={rank} {tuple(cfg.__dict__.values())} {key} median {med:.2f} "
                  f"over {rounds}", flush=True)


def _spec(spec: str, dev: torch.device, copy: float, rows: list[dict], args) -> None:
    t, rank = map(int, spec.split(":"))
    default = C.expand_config(current(dev), t, 6144, rank, 2)
    cands = parse(args.configs) if args.configs else [
        C.ExpandConfig(default.block_m, default.block_n, 128, default.num_warps,
                       default.num_stages, default.col_blocks, default.prefetch)]
    shape(t, rank, dev, copy, rows, cands, args.rounds)


def main(argv: list[str] | None = None) -> int:
    def extra(ap):
        ap.add_argument("--configs", default="",
                        help="'bm,bn,br,warps,stages,ncol,prefetch;...' (default: the shipped "
                             "config with BR 128)")
        ap.add_argument("--rounds", type=int, default=3)

    return probe_main(argv, __doc__, "8192:128,2048:128,64:128", _spec, extra)


if __name__ == "__main__":
    raise SystemExit(main())
