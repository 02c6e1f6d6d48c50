"""Sweep expand-kernel configs (GPU): tokens per tile, columns, warps, stages, column blocks.

    python benchmarks/sweep_expand.py [--json PATH] [--shapes expand:8192:64,...] [--decode]

Prefill (default): two phases per shape: every (BM, BN, warps) at the shipped stages /
column blocks, then every (stages, column blocks) for the three best of phase one. Timed
with a cold L2 (median); GB/s from the minimal bytes (``y`` once, the used adapters' ``B``
once, ``out`` read and written) against the copy bandwidth measured in the same run.

``--grid``: every (BN, column blocks, stages, prefetch) at the default BM instead.
``--wide``: 8 warps, or 128-token tiles: every (BM, warps, BN) of ``_WIDE`` x (4 / 8 column
blocks) x (1 / 3 stages) x prefetch.

``--configs "bm,bn,br,warps,stages,ncol,prefetch;..."`` (``br`` 0: the shipped rank step):
the shipped config and these only, timed in ``--rounds`` alternating rounds (medians).

``--decode``: every (BM, BN, column blocks, stages) of a small grid per decode shape
(default ``_DECODE_SHAPES``), timed as CUDA-graph replay per call rotating over 8 weight /
input sets (as ``bench_kernels`` reports decode), plus the cold-L2 median.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from lora_dispatch.bench.kernels import Problem, _build, _cycle, expand_case, round_median
from lora_dispatch.bench.timing import (
    copy_bandwidth_gbs,
    env_record,
    gpu_time_us,
    graph_time_us,
    write_json,
)
from lora_dispatch.devices import configs as C
from lora_dispatch.devices import current
from lora_dispatch.kernels.triton import launch as L

_SHAPES = ("expand:8192:64,qkv_expand:8192:64,gate_up_expand:8192:64,expand:8192:16,"
           "expand:2048:64,qkv_expand:2048:16")


_DECODE_SHAPES = ("gate_up_expand:64:16,gate_up_expand:16:16,qkv_expand:64:16,expand:64:16,"
                  "gate_up_expand:256:16")


def _decode_sweep(spec: str, dev: torch.device, rows: list[dict]) -> None:
    op, t, rank = spec.split(":")
    t, rank = int(t), int(rank)
    p = Problem(op, 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 8)
    default = C.expand_config(current(dev), t, items[0][0].total_out, rank, 2)
    cands = {default}
    for bn, ncol, st in itertools.product((64, 128, 256), (1, 2, 4), (1, 2)):
        cands.add(C.ExpandConfig(default.block_m, bn, default.block_r, 4, st, ncol))
    best = None
    for cfg in sorted(cands, key=lambda c: c != default):
        fns = []
        for w, _, y, out in items:
            plan = L._expand_plan(w, t, 1, cfg=cfg)
            y4 = y.unsqueeze(0)
            fns.append(lambda plan=plan, y4=y4, w=w, out=out:
                       L._launch_expand(plan, y4, w, batch, out, t))
        try:
            g = graph_time_us(_cycle(fns), dev, inner=24, reps=20)
            cold = gpu_time_us(fns[0], dev, warmup_ms=3, rep_ms=10)
        except Exception as exc:  # configs that fail to compile are skipped
            print(f"{spec} {cfg} failed: {exc!r}"[:200], flush=True)
            continue
        rows.append(dict(op=op, T=t, rank=rank, default=cfg == default, graph_us=g,
                         cold_us=cold, **cfg.__dict__))
        if best is None or g < best[1]:
            best = (cfg, g)
        if cfg == default:
            base = g
    print(f"{spec}: default {default} {base:.2f} us (graph); best {best[0]} {best[1]:.2f} us",
          flush=True)


def _phase1(default: C.ExpandConfig) -> list[C.ExpandConfig]:
    out = []
    for bm, bn, warps in itertools.product((32, 64, 128), (64, 128, 256), (4, 8)):
        if bm * bn > 64 * 128 * (warps // 4) * 2:
            continue
        out.append(C.ExpandConfig(bm, bn, default.block_r, warps, default.num_stages,
                                  default.col_blocks))
    return out


def _phase2(base: C.ExpandConfig) -> list[C.ExpandConfig]:
    return [C.ExpandConfig(base.block_m, base.block_n, base.block_r, base.num_warps, st, nc)
            for st, nc in itertools.product((1, 2, 3, 4), (1, 2, 4, 8))]


def _grid(default: C.ExpandConfig) -> list[C.ExpandConfig]:
    """``--grid``: the default's BM (32 / 64 by rank) x BN x column blocks x stages x
    prefetch."""
    return [C.ExpandConfig(default.block_m, bn, default.block_r, 4, st, nc, pf)
            for bn, nc, st, pf in itertools.product((64, 128), (2, 4, 8), (1, 3), (False, True))]


_WIDE = ((64, 8, 64), (64, 8, 128), (128, 4, 64), (128, 8, 64), (128, 8, 128))


def _wide(default: C.ExpandConfig) -> list[C.ExpandConfig]:
    """``--wide``: (BM, warps, BN) of ``_WIDE`` x column blocks x stages x prefetch."""
    return [C.ExpandConfig(bm, bn, default.block_r, warps, st, nc, pf)
            for (bm, warps, bn), nc, st, pf in itertools.product(_WIDE, (4, 8), (1, 3),
                                                                 (False, True))]


def _given(spec: str, dev: torch.device, copy: float, rows: list[dict], configs: str,
           rounds: int) -> None:
    """The shipped config and ``configs`` in alternating rounds, checked against the shipped
    output."""
    p, batch, w, y4, out, default, nbytes = expand_case(spec, dev)
    cands = [default]
    for item in filter(None, configs.split(";")):
        bm, bn, br, warps, st, nc, pf = map(int, item.split(","))
        c = C.ExpandConfig(bm, bn, br or default.block_r, warps, st, nc, bool(pf))
        if c not in cands:
            cands.append(c)
    pristine = out.clone()
    ref = pristine.clone()
    L._launch_expand(L._expand_plan(w, p.t, 1, cfg=default), y4, w, batch, ref, p.t)
    live = []
    for cfg in cands:
        plan = L._expand_plan(w, p.t, 1, cfg=cfg)
        chk = pristine.clone()
        try:
            L._launch_expand(plan, y4, w, batch, chk, p.t)
        except Exception as exc:  # configs that fail to compile are skipped
            print(f"{spec} {cfg} failed: {exc!r}"[:200], flush=True)
            continue
        live.append((cfg, plan, (chk.float() - ref.float()).abs().max().item()))
    for rnd in range(rounds):
        for cfg, plan, err in live:
            us = gpu_time_us(lambda plan=plan: L._launch_expand(plan, y4, w, batch, out, p.t),
                             dev, warmup_ms=5, rep_ms=20)
            rows.append(dict(op=p.op, T=p.t, rank=p.rank, round=rnd, default=cfg == default,
                             us=us, pct_copy=100 * nbytes / us / 1e3 / copy,
                             grid=plan.grid[0], max_diff_vs_shipped=err, **cfg.__dict__))
    for cfg, plan, err in live:
        med = round_median(rows, "us", op=p.op, T=p.t, rank=p.rank, **cfg.__dict__)
        print(f"{spec} {'*' if cfg == default else ' '} {tuple(cfg.__dict__.values())} "
              f"grid {plan.grid[0]}: {med:6.1f} us ({100 * nbytes / med / 1e3 / copy:.1f}%) "
              f"median of {rounds}, diff {err:.3g}", flush=True)


def _sweep(spec: str, dev: torch.device, copy: float, rows: list[dict],
           grid: bool = False, wide: bool = False) -> None:
    p, batch, w, y4, out, default, nbytes = expand_case(spec, dev)
    op, t, rank = p.op, p.t, p.rank
    seen: dict[C.ExpandConfig, float | None] = {}

    def time(cfg: C.ExpandConfig) -> float | None:
        if cfg in seen:
            return seen[cfg]
        plan = L._expand_plan(w, t, 1, cfg=cfg)
        try:
            us = gpu_time_us(lambda: L._launch_expand(plan, y4, w, batch, out, t), dev,
                             warmup_ms=5, rep_ms=20)
        except Exception as exc:  # configs that fail to compile are skipped
            print(f"{spec} {cfg} failed: {exc!r}"[:200], flush=True)
            us = None
        seen[cfg] = us
        if us is not None:
            gbs = nbytes / (us * 1e-6) / 1e9
            rows.append(dict(op=op, T=t, rank=rank, default=cfg == default, us=us, gbs=gbs,
                             pct_copy=100 * gbs / copy, **cfg.__dict__))
        return us

    base_us = time(default)
    if grid or wide:
        for c in _grid(default) if grid else _wide(default):
            time(c)
    else:
        ranked = sorted((c for c in _phase1(default) if time(c) is not None), key=seen.get)
        for cfg in ranked[:3]:
            for c2 in _phase2(cfg):
                time(c2)
    best = min((c for c in seen if seen[c] is not None), key=seen.get)
    pct = 100 * nbytes / (seen[best] * 1e-6) / 1e9 / copy
    print(f"{spec}: default {default} {base_us:.1f} us; best {best} {seen[best]:.1f} us "
          f"({pct:.0f}% of copy)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=None, help="op:T:rank,... (bf16, hidden 4096)")
    ap.add_argument("--decode", action="store_true", help="decode shapes, graph replay")
    ap.add_argument("--grid", action="store_true",
                    help="prefill: every BN x column blocks x stages x prefetch at the "
                         "default BM, instead of the two phases")
    ap.add_argument("--wide", action="store_true",
                    help="prefill: 8 warps or 128-token tiles (see _WIDE), instead of the "
                         "two phases")
    ap.add_argument("--configs", default="",
                    help="'bm,bn,br,warps,stages,ncol,prefetch;...': these and the shipped "
                         "config only, in alternating rounds")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    rows = []
    for spec in (args.shapes or (_DECODE_SHAPES if args.decode else _SHAPES)).split(","):
        if args.decode:
            _decode_sweep(spec, dev, rows)
        elif args.configs:
            _given(spec, dev, copy, rows, args.configs, args.rounds)
        else:
            _sweep(spec, dev, copy, rows, args.grid, args.wide)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
