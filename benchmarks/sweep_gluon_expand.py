"""Sweep the Gluon expand's token tile and column blocks over T (GPU).

    python benchmarks/sweep_gluon_expand.py [--json PATH] [--shapes qkv_expand:5120:64,...]
                                            [--rounds 3] [--candidates 64x16x4,64x16x6x3,...]

Each shape (``op:T:rank`` of ``bench_kernels``: ``expand``, ``qkv_expand``,
``gate_up_expand``, ``add_lora``; bf16, hidden 4096, 4 adapters) runs its backend op with the
registry's configs except the Gluon expand's, replaced by each candidate
``BMxNCOLxSTAGES[xBSTAGES[xBN[xBB]]]`` (token tile, blocks a program, ``out``'s ring depth,
then ``B``'s, ``STAGES`` where left out, the columns of a block, 64 where left out, and of a
``B`` box, the block's where left out; ``configs.expand_gluon`` patched, plans rebuilt);
``triton`` is the Triton expand (no Gluon), ``auto`` the registry's own choice. Every
candidate's ``out`` must match the Triton expand's (relative norm 1e-2, and its largest
error within 5% of the largest delta, so one block left out shows) before it is timed:
cold L2, median of CUDA events, ``--rounds`` alternating rounds (median of rounds), percent
of the copy bandwidth from ``bench_kernels``' minimal bytes.
"""

from __future__ import annotations

import itertools

import torch

from lora_dispatch.bench.kernels import Problem, _build, _call, min_bytes, probe_main
from lora_dispatch.bench.timing import gpu_time_us
from lora_dispatch.devices import configs as C
from lora_dispatch.kernels import triton as impl

SHAPES = ("qkv_expand:4096:64,qkv_expand:4608:64,qkv_expand:5120:64,qkv_expand:5632:64,"
          "qkv_expand:6144:64,qkv_expand:7168:64,qkv_expand:8192:64,gate_up_expand:5120:64,"
          "add_lora:5120:64,add_lora:6144:64")
CANDIDATES = [(bm, ncol, 4) for bm, ncol in itertools.product((64, 128), (8, 12, 16, 24, 32))]


def _sweep(spec: str, dev: torch.device, copy: float | None, rows: list[dict], args) -> None:
    op, t, rank = spec.split(":")
    p = Problem(op, 4096, int(t), int(rank), 4, torch.bfloat16, dev)
    batch, (item,) = _build(p, 1)
    w, out = item[0], item[3]
    base = out.clone()
    orig = C.expand_gluon

    def use(cfg) -> None:
        """cfg: a GluonExpandConfig, None (Triton expand) or "auto" (the registry's)."""
        C.expand_gluon = orig if cfg == "auto" else (lambda *a, **k: cfg)
        w.__dict__.pop("_triton_plans", None)

    fn = _call(p, impl, batch, item)
    variants = {"triton": None, "auto": "auto"}
    cands = (CANDIDATES if not args.candidates else
             [tuple(int(v) for v in c.split("x")) for c in args.candidates.split(",")])
    for bm, n, s, *b in cands:
        bn = b[1] if len(b) > 1 else 64
        bb = b[2] if len(b) > 2 else 0
        name = (f"bm{bm}/ncol{n}/st{s}" + (f"/b{b[0]}" if b else "")
                + (f"/bn{bn}" if bn != 64 else "") + (f"/bb{bb}" if bb else ""))
        variants[name] = C.GluonExpandConfig(bm, bn, n, s, bm // 16, b[0] if b else s, bb)
    try:
        use(None)
        out.copy_(base)
        fn()
        ref = out.float() - base.float()
        ok = {}
        for name, cfg in variants.items():
            use(cfg)
            out.copy_(base)
            try:
                fn()
                diff = out.float() - base.float() - ref
                err = max((diff.norm() / ref.norm()).item(),
                          (diff.abs().max() / ref.abs().max()).item() / 5)
            except Exception as exc:  # a variant that fails to build is reported, not fatal
                print(f"{spec} {name} failed: {exc!r}"[:300], flush=True)
                continue
            if not err < 1e-2:
                print(f"{spec} {name}: wrong result (rel {err:.3g})", flush=True)
                continue
            ok[name] = cfg
        times: dict[str, list[float]] = {n: [] for n in ok}
        for _ in range(args.rounds):
            for name, cfg in ok.items():
                use(cfg)
                times[name].append(gpu_time_us(fn, dev, warmup_ms=5, rep_ms=20))
    finally:
        C.expand_gluon = orig
        w.__dict__.pop("_triton_plans", None)
    nbytes = min_bytes(p)
    for name, us in times.items():
        med = sorted(us)[len(us) // 2]
        row = dict(shape=spec, variant=name, us=round(med, 2), rounds=[round(u, 2) for u in us],
                   pct_copy=round(100 * nbytes / med / 1e3 / copy, 1) if copy else None)
        rows.append(row)
        print(row, flush=True)


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, SHAPES, _sweep,
                      extra_args=_args)


def _args(ap) -> None:
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--candidates", default=None,
                    help="BMxNCOLxSTAGES[xBSTAGES[xBN[xBB]]],... (default: the built-in grid)")


if __name__ == "__main__":
    raise SystemExit(main())
