"""Decode ``add_lora`` (qkv) over pools whose ranks sit below ``max_rank``, in CUDA graphs.

    python benchmarks/probe_mixed_decode.py [--json PATH] [--pools 16:64,64:64,...]
                                            [--tokens 1,16,64,256] [--adapters 4,16]
                                            [--variants box16,box32,...]

A graph cannot plan for the ranks loaded when it replays, so a captured ``add_lora`` runs
the plan for ``max_rank`` (eager calls cut it to the loaded ranks' box: ``launch._cap``).
This probe times, for pools ``ranks:max_rank`` (ranks a ``/``-list loaded round-robin over
the adapters; hidden 4096, qkv 4096 + 1024 + 1024, bf16, one token a sequence, adapters
round-robin), the two-pass plan from a CUDA graph:

- ``shipped``: the plan for ``max_rank`` (what a graph runs);
- ``capB``: the eager plan capped at ``B`` (right only while every loaded rank is at most
  ``B``; the target a graph-safe plan is measured against);
- ``SHRINK[|EXPAND]``, each side ``ship`` (the config for ``max_rank``) or ``boxB`` (the
  config as if ``max_rank`` were ``B``: ``BN = B`` rank rows a shrink program, a ``B``-wide
  rank step in the expand), run over the full ``max_rank``: each slot's programs and rank
  steps follow its own rank (shrink programs past it exit, the expand loops ``cdiv(rank,
  B)`` steps). The shrink side takes ``.sSPLIT`` (K split), the expand side
  ``.eBMxBNxNCOL[xSTAGES][p]`` (tiling), both ``.lLOW`` (the low-rank path's bound,
  ``configs.LOW_RANK``; ``.l0``: off) and ``.mMID`` (a second, wider bound); the expand
  side defaults to the shrink side's box.

``--parts`` also times each plan's shrink alone and expand alone. ``--op expand`` times the
public expand (one product, the real ``y``) instead, with each variant's expand side.

Each variant's output is checked against the shipped plan's before it is timed.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace

import torch

import lora_dispatch as ld
from lora_dispatch.bench.timing import env_record, graph_time_us, write_json
from lora_dispatch.devices import configs as C
from lora_dispatch.devices import current
from lora_dispatch.kernels.triton import launch as L

HIDDEN = 4096
OUTS = (4096, 1024, 1024)


def _pool(spec: str, adapters: int, t: int, dev: torch.device):
    ranks_s, max_rank = spec.split(":")
    ranks = [int(r) for r in ranks_s.split("/")]
    g = torch.Generator(device=dev).manual_seed(0)
    w = ld.LoRAWeights(adapters, HIDDEN, OUTS, int(max_rank), dtype=torch.bfloat16, device=dev)
    for s in range(adapters):
        r = ranks[s % len(ranks)]
        a = torch.randn(len(OUTS) * r, HIDDEN, generator=g, device=dev) / HIDDEN**0.5
        b = torch.randn(sum(OUTS), r, generator=g, device=dev) / r**0.5
        w.load(s, list(a.split(r)), list(b.split(list(OUTS))), 0.5)
    batch = ld.LoRABatch.from_segments([1] * t, [i % adapters for i in range(t)], device=dev)
    x = torch.randn(t, HIDDEN, generator=g, device=dev).to(torch.bfloat16)
    out = torch.randn(t, sum(OUTS), generator=g, device=dev).to(torch.bfloat16)
    return w, batch, x, out


def _tiling(spec: str, cfg: C.ExpandConfig) -> C.ExpandConfig:
    parts = spec.rstrip("p").split("x")
    bm, bn, ncol = map(int, parts[:3])
    stages = int(parts[3]) if len(parts) > 3 else cfg.num_stages
    return replace(cfg, block_m=bm, block_n=bn, col_blocks=ncol, num_stages=stages,
                   prefetch=spec.endswith("p"))


def _side(spec: str, w, t: int, info, shrink: bool, split: int = 0):
    """The shrink's (``shrink``) or the expand's config of one side of a variant."""
    head, *opts = spec.split(".")
    box = w.max_rank if head == "ship" else int(head[3:])
    if shrink:
        cfg = C.shrink_config(info, t, w.in_features, box, w.lora_a.element_size(),
                              atomic=False, slices=w.num_slices)
        for o in opts:
            if o.startswith("s"):
                cfg = replace(cfg, split_k=int(o[1:]))
            elif o.startswith("l"):
                cfg = replace(cfg, low_rank=int(o[1:]))
            elif o.startswith("m"):
                cfg = replace(cfg, mid_rank=int(o[1:]))
        return cfg
    cfg = C.expand_config(info, t, w.total_out, box, w.lora_b.element_size(),
                          widths=tuple(w.out_features), partials=split)
    for o in opts:
        if o.startswith("e"):
            cfg = _tiling(o[1:], cfg)
        elif o.startswith("l"):
            cfg = replace(cfg, low_rank=int(o[1:]))
        elif o.startswith("m"):
            cfg = replace(cfg, mid_rank=int(o[1:]))
    return cfg


def variant_plan(spec: str, w, t: int, info):
    """The two-pass plan of variant ``spec`` (see the module docstring)."""
    if spec == "shipped":
        return L._two_pass_plan(w, t)
    if spec.startswith("cap"):
        return L._two_pass_plan(w, t, cap=int(spec[3:]))
    s_spec, _, e_spec = spec.partition("|")
    scfg = _side(s_spec, w, t, info, True)
    split = L._shrink_plan_for(w, t, False, None, scfg, False, 0, info, None).split
    ecfg = _side(e_spec or s_spec.split(".")[0], w, t, info, False, split)
    return L._two_pass_plan(w, t, shrink_cfg=scfg, expand_cfg=ecfg)


def _parts(plan, w, batch, x, t: int, dev: torch.device) -> tuple:
    """Graph-replay µs of the plan's shrink alone and expand alone (into its workspace)."""
    ws = torch.zeros(plan.ws_numel, device=dev)
    y = ws.as_strided((plan.shrink.split, w.num_slices, t, plan.ys[2]), plan.ys)
    out = torch.zeros(t, w.total_out, dtype=w.dtype, device=dev)
    return (graph_time_us(lambda: L._launch_shrink(plan.shrink, x, w, batch, y, t, plan.ys),
                          dev),
            graph_time_us(lambda: L._launch_expand(plan.expand, y, w, batch, out, t, plan.ys),
                          dev))


def expand_plan(spec: str, w, t: int, info):
    """The public expand's plan (one product) of variant ``spec``: ``shipped``, ``capB`` or
    an expand side (see the module docstring)."""
    if spec == "shipped":
        return L._expand_plan(w, t, 1)
    if spec.startswith("cap"):
        return L._expand_plan(w, t, 1, cap=int(spec[3:]))
    return L._expand_plan(w, t, 1, cfg=_side(spec, w, t, info, False, 1))


def _probe(pool: str, t: int, adapters: int, variants: list[str], parts: bool,
           dev: torch.device, op: str = "add_lora") -> dict:
    w, batch, x, out = _pool(pool, adapters, t, dev)
    info = current(dev)
    base = out.clone()
    want = base.clone()
    if op == "expand":
        y1 = L.shrink(x, w, batch).unsqueeze(0)  # [1, S, T, R]

        def run(plan, o):
            L._launch_expand(plan, y1, w, batch, o, t)

        make = expand_plan
        parts = False
    else:
        def run(plan, o):
            L._two_pass(plan, o, x, w, batch, t)

        make = variant_plan
    run(make("shipped", w, t, info), want)
    res: dict[str, float | None] = {}
    what = f"{op} pool={pool} T={t} a={adapters}"
    for v in variants:
        try:
            plan = make(v, w, t, info)
            got = base.clone()
            run(plan, got)
            err = ((got.float() - want.float()).abs().max()
                   / want.float().abs().max()).item()
            if not err < 2e-2:
                print(f"{what} {v}: wrong ({err:.3g})", flush=True)
                res[v] = None
                continue
            res[v] = graph_time_us(lambda plan=plan: run(plan, out), dev)
            if parts:
                res[v + "/shrink"], res[v + "/expand"] = _parts(plan, w, batch, x, t, dev)
        except Exception as exc:  # a variant that fails to build is reported and skipped
            print(f"{what} {v} failed: {exc!r}"[:300], flush=True)
            res[v] = None
    print(what + " " + " ".join(f"{k}={v:.2f}" for k, v in res.items() if v is not None),
          flush=True)
    return dict(op=op, pool=pool, T=t, adapters=adapters,
                **{k: None if v is None else round(v, 3) for k, v in res.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--pools", default="16:64,64:64,16:16,8/16/32/64:64")
    ap.add_argument("--tokens", default="1,16,64,256")
    ap.add_argument("--adapters", default="4,16")
    ap.add_argument("--variants", default="shipped,cap16,box16,box32,box16.s8,box16.s4")
    ap.add_argument("--op", default="add_lora", choices=("add_lora", "expand"),
                    help="expand: the public expand (one product, variants' expand side)")
    ap.add_argument("--parts", action="store_true",
                    help="also time each plan's shrink and expand alone")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: checks only
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    variants = args.variants.split(",")
    rows = []
    for pool, t, a in itertools.product(args.pools.split(","), ints(args.tokens),
                                        ints(args.adapters)):
        top = max(int(r) for r in pool.split(":")[0].split("/"))
        mr = int(pool.split(":")[1])
        vs = [v for v in variants if not (v.startswith("cap") and not top <= int(v[3:]) < mr)]
        rows.append(_probe(pool, t, a, vs, args.parts, dev, args.op))
    if args.json:
        write_json(args.json, env_record(dev), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
