"""The Gluon shrink's ``x`` / ``A`` boxes: ``[64, 64]`` tiles against ``[G, 64, 64]`` boxes
of the operands' ``[K / 64, rows, 64]`` views (GPU, Hopper, Triton 3.6).

    python benchmarks/ab_gluon_chunks.py [--json PATH] [--rounds 3] [--tokens 2048,8192]
        [--ops shrink,add_lora] [--ranks 16,64] [--slices 3,2,1] [--adapters 1,4]
        [--variants auto,g2,...] [--extra NAME:FIELD=INT,...]

``probe_tma_read.py`` read ``x [8192, 4096]`` 2-4 points of the copy bandwidth faster with
``[2, 64, 64]`` boxes of the ``[K / 64, T, 64]`` view (``perm``: 256 contiguous bytes a box
row pair, still one 128-byte-swizzled ``[64, 64]`` tile per chunk for wgmma) than with the
shipped kernel's ``[64, 64]`` boxes. This runs the shipped Gluon shrink both ways on the
benchmark's rows (hidden 4096, bf16, 4 adapters, one segment each):

- public ``lora_shrink`` (qkv and one slice, rank 16 / 64): the registry's pick (``auto``),
  the Gluon shrink forced with ``chunks`` 1 / 2 / 4 and one or two K splits (two: zero fill
  and atomics);
- ``add_lora`` (qkv, rank 16 / 64): ``auto`` (Gluon, chunks 1 from T=2048) against chunks
  2 / 4 at the same splits, two K splits (partial planes its expand sums) and 128-token
  tiles with one or two splits;
- ``--extra``: variants setting other config fields (those a patch in
  ``benchmarks/patches`` adds, e.g. ``shrink-gluon-rotate-k.patch``: ``rot:rotate=1``).

Each variant's plan is built under its own config (a wrapper around
``configs.shrink_gluon``), its output checked against the float64 reference (and a
round-robin gather batch at T=1000 with mixed ranks, forced Gluon); then cold-L2 CUDA-event
medians in alternating rounds (best round reported, every round kept) and the profiler's
kernel time. % of the copy bandwidth from :func:`min_bytes`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics

import torch

import lora_dispatch as ld
from lora_dispatch.bench.kernels import Problem, _build, min_bytes
from lora_dispatch.bench.timing import (
    copy_bandwidth_gbs,
    env_record,
    gpu_time_us,
    kernel_spans_us,
    pct_of_copy,
    write_json,
)
from lora_dispatch.devices import configs
from lora_dispatch.kernels import reference
from lora_dispatch.kernels.triton import launch as L

_ORIG = configs.shrink_gluon
_CUR: dict = {}


def _shrink_gluon(info, t, k, slices, max_rank, itemsize, available=True, atomic=False):
    """``configs.shrink_gluon`` with the active variant's overrides (``_CUR``)."""
    c = _ORIG(info, t, k, slices, max_rank, itemsize, available, atomic)
    if c is None or not _CUR:
        return c
    bm = _CUR.get("bm", c.block_m)
    chunks, stages = configs.gluon_ring(k, bm, slices * c.block_r,
                                        _CUR.get("chunks", c.chunks), itemsize,
                                        _CUR.get("stages", configs._GLUON_MAX_STAGES))
    fields = {"block_m": bm, "num_warps": bm // 16, "chunks": chunks, "stages": stages,
              "split_k": _CUR.get("split", c.split_k), **_CUR.get("fields", {})}
    return dataclasses.replace(c, **fields)


# name: (LORA_DISPATCH_GLUON, overrides)
SHRINK_VARIANTS = {
    "auto": (None, {}),
    "g1": ("1", {"chunks": 1}),
    "g2": ("1", {"chunks": 2}),
    "g4": ("1", {"chunks": 4}),
    "g1s2": ("1", {"chunks": 1, "split": 2}),
    "g2s2": ("1", {"chunks": 2, "split": 2}),
    "g2s2st3": ("1", {"chunks": 2, "split": 2, "stages": 3}),
    "m128s2": ("1", {"bm": 128, "split": 2}),
    "m128g2s2": ("1", {"bm": 128, "chunks": 2, "split": 2}),
    "m128": ("1", {"bm": 128, "split": 1}),
    "m128g2": ("1", {"bm": 128, "chunks": 2, "split": 1}),
}
# add_lora's K splits write partial planes its expand sums (no fill, no atomics)
ADD_VARIANTS = {
    "auto": (None, {}),
    "g2": (None, {"chunks": 2}),
    "g4": (None, {"chunks": 4}),
    "s2": (None, {"split": 2}),
    "m128": (None, {"bm": 128, "split": 1}),
    "m128s2": (None, {"bm": 128, "split": 2}),
    "m128g2s2": (None, {"bm": 128, "chunks": 2, "split": 2}),
}


class _Env:
    """One variant in force: ``LORA_DISPATCH_GLUON`` and ``configs.shrink_gluon`` with its
    overrides, while plans are built (they are cached, so calls keep the variant's plan)."""

    def __init__(self, gluon: str | None, over: dict) -> None:
        self.gluon, self.over = gluon, over

    def __enter__(self):
        configs.shrink_gluon = _shrink_gluon
        self.prev = os.environ.get("LORA_DISPATCH_GLUON")
        if self.gluon is None:
            os.environ.pop("LORA_DISPATCH_GLUON", None)
        else:
            os.environ["LORA_DISPATCH_GLUON"] = self.gluon
        _CUR.clear()
        _CUR.update(self.over)

    def __exit__(self, *exc):
        configs.shrink_gluon = _ORIG
        _CUR.clear()
        if self.prev is None:
            os.environ.pop("LORA_DISPATCH_GLUON", None)
        else:
            os.environ["LORA_DISPATCH_GLUON"] = self.prev


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    err = (got.double() - want.double()).abs().max().item()
    return err <= 2e-2 * max(1.0, want.double().abs().max().item())


def _case(op: str, outs: tuple, rank: int, t: int, dev, variant: tuple, adapters: int = 4):
    """(fn, check) for one variant: its own weights and batch, plan built under its env."""
    gluon, over = variant
    p = Problem(op, 4096, t, rank, adapters, torch.bfloat16, dev, outs)
    batch, (item,) = _build(p, 1)
    w, x, _, out = item
    with _Env(gluon, over):
        if op == "shrink":
            def fn():
                return ld.lora_shrink(x, w, batch)
            ok = all(_close(fn(), reference.shrink(x.double(), w, batch)) for _ in range(3))
            plan = L._pick(L.plan_for("shrink", w, t), x, w)
            desc = (L._desc_kind(plan, x, w), getattr(plan.gluon, "cfg", None))
        else:
            base = out.clone()
            want = base.double()
            reference.add_lora(want, x.double(), w, batch)
            ok = True
            for _ in range(3):
                out.copy_(base)
                ld.add_lora(out, x, w, batch)
                ok &= _close(out, want)

            def fn():
                return ld.add_lora(out, x, w, batch)
            ap = L._pick(L.plan_for("add", w, t), x, w)
            g = ap.shrink.gluon if ap.shrink is not None else None
            desc = (0 if g is None else 2, getattr(g, "cfg", None))
    return fn, ok, desc, p


def _gather_checks(dev, extra: tuple = ()) -> list[dict]:
    """Round-robin (non-consecutive) tokens and mixed ranks, T=1000, forced Gluon: the
    register-gather consumer with every box kind."""
    rows = []
    t = 1000
    slots = [i % 5 - 1 for i in range(t)]  # -1 and four adapters
    batch = ld.LoRABatch.from_segments([1] * t, slots, device=dev)
    g = torch.Generator(device=dev).manual_seed(1)
    for outs in ((4096, 1024, 1024), (4096,)):
        for over in ({"chunks": 1}, {"chunks": 2}, {"chunks": 4}, *extra):
            w = ld.LoRAWeights(4, 4096, outs, 64, dtype=torch.bfloat16, device=dev)
            for s, r in enumerate((64, 16, 40, 0)):
                if r == 0:
                    continue
                a = torch.randn(len(outs) * r, 4096, generator=g, device=dev) / 64
                b = torch.randn(sum(outs), r, generator=g, device=dev) / r**0.5
                w.load(s, list(a.split(r)), list(b.split(list(outs))), 0.5)
            x = torch.randn(t, 4096, generator=g, device=dev).to(torch.bfloat16)
            out = torch.randn(t, sum(outs), generator=g, device=dev).to(torch.bfloat16)
            with _Env("1", over):
                y = ld.lora_shrink(x, w, batch)
                ok_s = _close(y, reference.shrink(x.double(), w, batch))
                want = out.double()
                reference.add_lora(want, x.double(), w, batch)
                ld.add_lora(out, x, w, batch)
                ok_a = _close(out, want)
            rows.append(dict(check="gather T=1000 mixed ranks", slices=len(outs),
                             over=str(over), shrink_ok=ok_s, add_lora_ok=ok_a))
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", default="2048,4096,8192")
    ap.add_argument("--ops", default="shrink,add_lora")
    ap.add_argument("--ranks", default="16,64")
    ap.add_argument("--adapters", default="4")
    ap.add_argument("--slices", default="3,1", help="3: qkv; shrink only: 2 gate_up, 1 one slice")
    ap.add_argument("--variants", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--no-gather", action="store_true", help="skip the gather checks")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME:FIELD=INT,...",
                    help="one more variant (both ops) setting GluonShrinkConfig fields, e.g. "
                         "a field a patch in benchmarks/patches adds: rot:rotate=1")
    args = ap.parse_args(argv)
    for spec in args.extra:
        name, _, fields = spec.partition(":")
        over = {"fields": {f: int(v) for f, v in (kv.split("=") for kv in fields.split(","))}}
        SHRINK_VARIANTS[name] = ("1", over)
        ADD_VARIANTS[name] = (None, over)
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    print(f"copy bandwidth {copy:.0f} GB/s", flush=True)
    extra = tuple(SHRINK_VARIANTS[s.partition(":")[0]][1] for s in args.extra)
    checks = [] if args.no_gather else _gather_checks(dev, extra)
    keep = None if args.variants is None else set(args.variants.split(","))
    cases = []
    tokens = [int(v) for v in args.tokens.split(",")]
    for op in args.ops.split(","):
        variants = SHRINK_VARIANTS if op == "shrink" else ADD_VARIANTS
        ranks = [int(v) for v in args.ranks.split(",")]
        slices = [int(v) for v in args.slices.split(",")]
        shapes = ([((4096, 1024, 1024), r) for r in ranks if 3 in slices]
                  + [((14336, 14336), r) for r in ranks if 2 in slices and op == "shrink"]
                  + [((4096,), r) for r in ranks if 1 in slices and op == "shrink"])
        for (outs, rank), t, n, (name, v) in itertools.product(
                shapes, tokens, [int(a) for a in args.adapters.split(",")], variants.items()):
            if keep is not None and name not in keep:
                continue
            try:
                fn, ok, desc, p = _case(op, outs, rank, t, dev, v, n)
            except Exception as exc:  # a variant the launcher refuses is reported
                print(f"{op} {outs} r{rank} T{t} {name} failed: {exc!r}"[:400],
                      flush=True)
                continue
            cases.append(dict(op=op, slices=len(outs), rank=rank, T=t, adapters=n,
                              variant=name,
                              ok=ok, kind=desc[0], cfg=str(desc[1]), fn=fn, p=p,
                              us=[]))
            print(op, len(outs), rank, t, n, name, "ok" if ok else "WRONG", desc, flush=True)
    for _ in range(args.rounds):
        for c in cases:
            c["us"].append(gpu_time_us(c["fn"], dev, warmup_ms=5, rep_ms=30))
    rows = []
    for c in cases:
        fn, p = c.pop("fn"), c.pop("p")
        us = min(c["us"])
        k = statistics.median(kernel_spans_us(fn, dev))
        nbytes = min_bytes(p)
        rows.append(dict(c, us=round(us, 2), rounds=[round(u, 2) for u in c["us"]],
                         kernel_us=round(k, 2), pct_copy=round(pct_of_copy(nbytes, us, copy), 1),
                         pct_copy_kernel=round(pct_of_copy(nbytes, k, copy), 1)))
        r = rows[-1]
        print(f"{r['op']:8s} S{r['slices']} r{r['rank']:<3d} T{r['T']:<5d} a{r['adapters']:<2d} "
              f"{r['variant']:5s} "
              f"kind {r['kind']} {r['us']:7.2f} us {r['pct_copy']:5.1f}%  kernel "
              f"{r['kernel_us']:7.2f} {r['pct_copy_kernel']:5.1f}%  {r['rounds']}", flush=True)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy,
                               "reproduce": "python benchmarks/ab_gluon_chunks.py"},
                   checks + rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
