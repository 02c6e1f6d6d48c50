"""Prefill shrink with TMA descriptor loads against pointer loads (GPU, sm_90+).

    python benchmarks/probe_shrink_tma.py [--json PATH] [--tokens 1024,2048,4096,8192]
                                          [--no-sweep]

Three parts, bf16, hidden 4096, 4 adapters in contiguous segments:

1. ``ab``: the shipped config of each shrink (add_lora's workspace shrink over q/k/v, and
   the public atomic shrink of one 4096 slice), pointer kernel vs ``shrink_tma_kernel``, per
   ``T``; outputs compared.
2. ``sweep``: TMA configs (tokens per tile, K step, warps, stages, rank blocks, splits) on
   the qkv workspace shrink at T = 2048 and 8192.
3. ``add_lora``: the whole qkv ``add_lora`` with ``LORA_DISPATCH_TMA`` 0 and 1.

Cold-L2 medians (``gpu_time_us``); % of the copy bandwidth measured in the same run from the
minimal bytes (``x`` once, the used ``A`` rows once, ``y`` written once in float32).
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch

from lora_dispatch.bench.kernels import Problem, _build, min_bytes
from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, gpu_time_us, write_json
from lora_dispatch.devices import configs as C
from lora_dispatch.kernels.triton import launch as L


def _bytes(w, t: int, adapters: int) -> int:
    s, r, k = w.num_slices, w.max_rank, w.in_features
    return t * k * 2 + adapters * s * r * k * 2 + s * t * r * 4


def _plan(w, t: int, atomic: bool, tma: str, cfg: C.ShrinkConfig | None = None):
    os.environ[C.ENV_TMA] = tma
    try:
        return L._shrink_plan(w, t, atomic=atomic, cfg=cfg)
    finally:
        del os.environ[C.ENV_TMA]


def _runner(plan, x, w, batch, t: int, atomic: bool):
    shape = (plan.split, w.num_slices, t, w.max_rank)
    if atomic:
        return lambda: L._launch_shrink(plan, x, w, batch, torch.zeros(shape, device=x.device), t)
    ws = torch.empty(shape, device=x.device)
    return lambda: (L._launch_shrink(plan, x, w, batch, ws, t), ws)[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="1024,2048,4096,8192")
    ap.add_argument("--add-tokens", default="2048,8192")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu: smoke run under TRITON_INTERPRET=1")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    copy = copy_bandwidth_gbs(dev)
    rows: list[dict] = []

    def record(**row):
        row["pct_copy"] = round(100 * row.pop("nbytes") / (row["us"] * 1e3) / (copy or 1), 1)
        row["us"] = round(row["us"], 2)
        rows.append(row)
        print(row, flush=True)

    tokens = [int(v) for v in args.tokens.split(",")]
    for (op, atomic), rank, t in itertools.product(
            (("add_lora", False), ("shrink", True)), (16, 64), tokens):
        p = Problem(op, 4096, t, rank, 4, torch.bfloat16, dev)
        batch, items = _build(p, 1)
        w, x = items[0][:2]
        outs = {}
        for tma in ("0", "1"):
            plan = _plan(w, t, atomic, tma)
            fn = _runner(plan, x, w, batch, t, atomic)
            us = gpu_time_us(fn, dev, warmup_ms=5, rep_ms=25)
            y = torch.full((plan.split, w.num_slices, t, w.max_rank), float("nan"), device=dev)
            if atomic:
                y.zero_()
            L._launch_shrink(plan, x, w, batch, y, t)
            outs[tma] = y.sum(0)
            record(part="ab", op=op, atomic=atomic, T=t, rank=rank, tma=plan.tma,
                   cfg=list(plan.cx[3:7]) + [plan.split, plan.num_warps, plan.num_stages],
                   us=us, nbytes=_bytes(w, t, 4))
        diff = (outs["1"] - outs["0"]).abs().max().item()
        print(f"  max |tma - ptr| = {diff:.3g}", flush=True)
        assert diff < 1e-2, diff

    if not args.no_sweep:
        for t, rank in itertools.product((8192, 2048), (16, 64)):
            p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
            batch, items = _build(p, 1)
            w, x = items[0][:2]
            bn = 16 if rank == 16 else 64
            rbs = (1, 3) if rank == 16 else (1,)
            splits = (1, 2) if t <= 2048 else (1,)
            for bm, bk, warps, stages, rb, split in itertools.product(
                    (64, 128), (64, 128), (4, 8), (3, 4), rbs, splits):
                if (bm == 128 and warps == 4 and rb > 1) or (bm == 128 and t <= 2048):
                    continue
                cfg = C.ShrinkConfig(bm, bn, bk, split, warps, stages, rb)
                try:
                    plan = _plan(w, t, False, "1", cfg)
                    us = gpu_time_us(_runner(plan, x, w, batch, t, False), dev,
                                     warmup_ms=3, rep_ms=15)
                except Exception as exc:  # configs that fail to compile are skipped
                    print(f"{cfg} failed: {exc!r}"[:200], flush=True)
                    continue
                record(part="sweep", op="add_lora", atomic=False, T=t, rank=rank, tma=True,
                       cfg=[bm, bn, bk, rb, split, warps, stages], us=us,
                       nbytes=_bytes(w, t, 4))

    for t, rank in itertools.product([int(v) for v in args.add_tokens.split(",")], (16, 64)):
        p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
        batch, items = _build(p, 1)
        w, x, _, out = items[0]
        for tma in ("0", "1"):
            os.environ[C.ENV_TMA] = tma
            w.__dict__.pop("_triton_plans", None)
            us = gpu_time_us(lambda w=w, x=x, out=out, b=batch: L.add_lora(out, x, w, b), dev,
                             warmup_ms=5, rep_ms=25)
            record(part="add_lora", op="add_lora", atomic=False, T=t, rank=rank,
                   tma=L.plan_for("add", w, t).shrink.tma, cfg=None, us=us, nbytes=min_bytes(p))
            del os.environ[C.ENV_TMA]
            w.__dict__.pop("_triton_plans", None)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
