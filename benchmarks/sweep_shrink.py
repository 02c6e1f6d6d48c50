"""Sweep shrink-kernel configs on prefill shapes (GPU): BM, BN, rank blocks, BK, stages, warps,
split-K.

    python benchmarks/sweep_shrink.py [--json PATH] [--small | --mid | --focused] [--atomic]
        [--tma] [--tokens 8192,2048] [--ranks 16,64]

Times the workspace-mode shrink (the one ``add_lora`` launches; ``--atomic``: the public
op's, zero fill included where it needs one) with cold-L2 event medians (``gpu_time_us``) and
prints GB/s from the minimal bytes against the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch

from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, gpu_time_us, write_json
from lora_dispatch.devices import configs as C
from lora_dispatch.devices import current
from lora_dispatch.kernels.triton import launch as L


def _full(w) -> set:
    out = set()
    width = max(16, C.next_pow2(w.num_slices * w.max_rank))
    for bm, bn, rb, bk, stages, warps, split in itertools.product(
            (64, 128), (16, 64, 128), (1, 2, 3), (32, 64, 128), (3, 4), (4, 8), (1, 2, 4)):
        rows_n = bn * rb
        if bn > max(16, C.next_pow2(w.max_rank)) or rows_n > width:
            continue
        smem = stages * (bm + rows_n) * bk * 2
        if smem > 200 * 1024 or bm * rows_n > 128 * 128 * (warps // 4):
            continue
        out.add(C.ShrinkConfig(bm, bn, bk, split, warps, stages, rb))
    return out


def _focused(rank: int, slices: int, t: int) -> set:
    """Around the shipped schedule: BN up to the rank, 1 to S blocks per program."""
    out = set()
    pairs = {(bn, rb) for bn in (16, 32, 64) for rb in (1, 2, 3)
             if max(16, C.next_pow2(rank) // 2) <= bn <= max(16, C.next_pow2(rank))
             and rb <= slices * -(-rank // bn)}
    splits = (1,) if t >= 4096 else (1, 2)
    if t <= 256:  # decode: 16-token tiles, K split over the device
        for rb, bk, split in itertools.product(range(1, min(3, slices) + 1), (128, 256),
                                               (4, 8)):
            out.add(C.ShrinkConfig(16, max(16, min(64, C.next_pow2(rank))), bk, split, 4, 4,
                                   rb))
        return out
    bms = (64, 128) if t >= 4096 else (64,)
    for (bn, rb), bm, bk, stages, split in itertools.product(sorted(pairs), bms, (64, 128),
                                                            (3, 4), splits):
        rows_n = bn * rb
        warps = 4 if bm * rows_n <= 64 * 64 else 8
        if stages * (bm + rows_n) * bk * 2 > 200 * 1024:
            continue
        out.add(C.ShrinkConfig(bm, bn, bk, split, warps, stages, rb))
    return out


def _mid(rank: int, slices: int) -> set:
    """Token-tile height, 1 or 3 blocks per program, K step and split (mid-size prefill,
    where one block per tile under-fills the device)."""
    out = set()
    bn = max(16, min(64, C.next_pow2(rank)))
    rbs = (1, 3) if slices * -(-rank // bn) >= 3 and bn * 3 <= 64 else (1,)
    for bm, rb, bk, split in itertools.product((32, 64, 128), rbs, (64, 128), (1, 2)):
        warps = 4 if bm * bn * rb <= 64 * 64 else 8
        out.add(C.ShrinkConfig(bm, bn, bk, split, warps, 4, rb))
    return out


def _small(rank: int, slices: int) -> set:
    """Short token tiles (more programs in flight per unit, as in the best read-only
    kernel of ``roofline_read.py``), long K steps, 4-8 warps, 1-2 splits."""
    out = set()
    bn = max(16, min(64, C.next_pow2(rank)))
    rbs = (1, 3) if slices * -(-rank // bn) >= 3 and bn * 3 <= 64 else (1,)
    for bm, rb, bk, warps, stages, split in itertools.product(
            (16, 32, 64), rbs, (128, 256), (4, 8), (4,), (1, 2, 4)):
        if stages * (bm + bn * rb) * bk * 2 > 200 * 1024:
            continue
        out.add(C.ShrinkConfig(bm, bn, bk, split, warps, stages, rb))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="8192,2048")
    ap.add_argument("--ranks", default="16,64")
    ap.add_argument("--focused", action="store_true",
                    help="a small set around the shipped schedule (BN <= rank, 1-3 blocks)")
    ap.add_argument("--mid", action="store_true",
                    help="tile height x blocks per program x K step x split (mid-size T)")
    ap.add_argument("--small", action="store_true",
                    help="short token tiles x K step x warps x stages x split")
    ap.add_argument("--atomic", action="store_true",
                    help="the public shrink's mode (zero fill + float32 atomics), not add_lora's")
    ap.add_argument("--op", default="shrink", choices=("shrink", "add_lora"),
                    help="add_lora: the fused qkv shape (S = 3 slices) that add_lora shrinks")
    ap.add_argument("--tma", action="store_true",
                    help="the TMA shrink kernel (x and A through tensor descriptors) instead "
                         "of the pointer-load one")
    args = ap.parse_args(argv)
    os.environ[C.ENV_TMA] = "1" if args.tma else "0"
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    rows = []
    shapes = itertools.product(map(int, args.tokens.split(",")), map(int, args.ranks.split(",")))
    for t, rank in shapes:
        p = Problem(args.op, 4096, t, rank, 4, torch.bfloat16, dev)
        batch, items = _build(p, 1)
        w, x, _, _ = items[0]
        default = C.shrink_config(current(dev), t, 4096, w.max_rank, 2, args.atomic,
                                  slices=w.num_slices)
        cands = {default}
        if args.small:
            cands.update(_small(w.max_rank, w.num_slices))
        elif args.mid:
            cands.update(_mid(w.max_rank, w.num_slices))
        else:
            cands.update(_focused(w.max_rank, w.num_slices, t) if args.focused else _full(w))
        best = None
        for cfg in sorted(cands, key=lambda c: (c != default, c.block_m, c.block_n, c.block_k)):
            plan = L._shrink_plan(w, t, atomic=args.atomic, cfg=cfg)
            if args.atomic:  # the public op: zero fill, then the split-K atomics (one
                # split: the kernel writes its own zeros)
                y = torch.empty((w.num_slices, t, w.max_rank), device=dev)

                def fn(plan=plan, y=y, x=x, w=w, batch=batch, t=t):
                    if not plan.meta["FILL"]:
                        y.zero_()
                    L._launch_shrink(plan, x, w, batch, y, t, (0, *y.stride()))
            else:
                y = torch.empty((plan.split, w.num_slices, t, w.max_rank), device=dev)

                def fn(plan=plan, y=y, x=x, w=w, batch=batch, t=t):
                    L._launch_shrink(plan, x, w, batch, y, t)

            try:
                us = gpu_time_us(fn, dev, warmup_ms=5, rep_ms=20)
            except Exception as exc:  # configs that fail to compile are skipped
                print(f"T={t} r={rank} {cfg} failed: {exc!r}"[:160])
                continue
            s_, k_ = w.num_slices, w.in_features  # x once, A of the used slots, y in fp32
            nbytes = t * k_ * 2 + min(4, t) * s_ * rank * k_ * 2 + t * s_ * rank * 4
            gbs = nbytes / (us * 1e-6) / 1e9
            row = dict(op=args.op, atomic=args.atomic, tma=args.tma, T=t, rank=rank,
                       default=cfg == default,
                       us=us, gbs=gbs,
                       pct_copy=100 * gbs / copy, **cfg.__dict__)
            rows.append(row)
            if best is None or us < best["us"]:
                best = row
            if cfg == default:
                print(f"T={t} r={rank} default {cfg}: {us:.1f} us {row['pct_copy']:.0f}%")
        print(f"T={t} r={rank} best {best}")
        if args.atomic:  # what lora_shrink runs by default (the Gluon shrink where picked)
            import lora_dispatch as ld

            us = gpu_time_us(lambda x=x, w=w, batch=batch: ld.lora_shrink(x, w, batch), dev,
                             warmup_ms=5, rep_ms=20)
            rows.append(dict(op=args.op, atomic=True, T=t, rank=rank, default=None,
                             public=True, us=us))
            print(f"T={t} r={rank} public lora_shrink: {us:.1f} us")
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
