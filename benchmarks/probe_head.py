"""What the prefill shrinks' tile head costs: one dependent memory round trip against two
before the first ``x`` load (GPU, Hopper, Triton 3.6).

    python benchmarks/probe_head.py [--json PATH] [--rounds 3] [--tokens 2048,8192]
        [--cases shrink:1:16,shrink:1:64,shrink:3:64,add_lora:3:16,add_lora:3:64]
        [--adapters 4]

A prefill shrink program reads its tile (``tile_map``: slot, first and end row of
``sorted_tokens``), then, in parallel, its slot's rank and its tokens (the Gluon shrink: the
first and last token, to test that they are consecutive), and only then starts its ``x``
stream: two dependent round trips to memory, both from DRAM in the benchmark (cold L2). With
``LORA_DISPATCH_PROBE_HEAD=1`` (``benchmarks/patches/head-one-round-trip.patch``) the
kernels take the tile's first token to be its first row (true for the benchmark's batches:
one segment a slot, every token with a slot) and do not wait for the rank before the
stream: one round trip. The output is checked against the float64 reference in both.

Each round runs both settings in their own processes (the setting is read when the kernels
are defined), alternating; medians of cold-L2 CUDA events and of the profiler's kernel time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ENV = "LORA_DISPATCH_PROBE_HEAD"


def _child(args: argparse.Namespace) -> list[dict]:
    import statistics

    import lora_dispatch as ld
    from lora_dispatch.bench.kernels import Problem, _build, min_bytes
    from lora_dispatch.bench.timing import copy_bandwidth_gbs, gpu_time_us, kernel_spans_us
    from lora_dispatch.kernels import reference
    from lora_dispatch.kernels.triton import shrink_gluon_kernel as G
    from lora_dispatch.kernels.triton import shrink_kernel as P

    if not (hasattr(G, "_HEAD") and hasattr(P, "_HEAD")):
        raise SystemExit("probe_head.py measures benchmarks/patches/head-one-round-trip.patch: "
                         "apply it first (git apply), or both settings run the same kernels")
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    rows = []
    for t in (int(v) for v in args.tokens.split(",")):
        for case in args.cases.split(","):
            op, slices, rank = case.split(":")
            outs = {"1": (4096,), "2": (14336, 14336), "3": (4096, 1024, 1024)}[slices]
            for adapters in (int(v) for v in args.adapters.split(",")):
                p = Problem(op, 4096, t, int(rank), adapters, torch.bfloat16, dev, outs)
                batch, ((w, x, _, out),) = _build(p, 1)
                if op == "shrink":
                    want = reference.shrink(x.double(), w, batch)
                    got = ld.lora_shrink(x, w, batch)

                    def fn(x=x, w=w, batch=batch):
                        return ld.lora_shrink(x, w, batch)
                else:
                    want = out.double()
                    reference.add_lora(want, x.double(), w, batch)
                    got = out.clone()
                    ld.add_lora(got, x, w, batch)

                    def fn(x=x, w=w, batch=batch, out=out):
                        return ld.add_lora(out, x, w, batch)
                err = (got.double() - want).abs().max().item()
                ok = err <= 2e-2 * max(1.0, want.abs().max().item())
                ev = gpu_time_us(fn, dev)
                kt = statistics.median(kernel_spans_us(fn, dev, n=30))
                nb = min_bytes(p)
                row = dict(head=int(os.environ.get(ENV, "0")), op=op, slices=int(slices),
                           rank=int(rank), T=t, adapters=adapters, ok=ok,
                           events_us=round(ev, 2), kernel_us=round(kt, 2),
                           pct_copy=round(100 * nb / (ev * 1e3) / copy, 1),
                           pct_copy_kernel=round(100 * nb / (kt * 1e3) / copy, 1),
                           copy_gbs=round(copy))
                print(row, flush=True)
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", default="2048,8192")
    ap.add_argument("--cases",
                    default="shrink:1:16,shrink:1:64,shrink:3:64,add_lora:3:16,add_lora:3:64")
    ap.add_argument("--adapters", default="4")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        with open(args.child, "w") as f:
            json.dump(_child(args), f)
        return 0
    from lora_dispatch.bench.timing import env_record, write_json

    rows = []
    fwd = ["--tokens", args.tokens, "--cases", args.cases, "--adapters", args.adapters]
    for r in range(args.rounds):
        for head in ((0, 1) if r % 2 == 0 else (1, 0)):
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                path = f.name
            env = {**os.environ, ENV: str(head)}
            subprocess.run([sys.executable, os.path.abspath(__file__), "--child", path, *fwd],
                           env=env, check=True)
            with open(path) as f:
                rows += [dict(rnd=r, **row) for row in json.load(f)]
            os.unlink(path)
    print("\nmedian over rounds (events · kernel us), head 0 -> 1:")
    keys = sorted({(x["op"], x["slices"], x["rank"], x["T"], x["adapters"]) for x in rows})
    for k in keys:
        def med(head, field, k=k):
            v = sorted(x[field] for x in rows
                       if (x["op"], x["slices"], x["rank"], x["T"], x["adapters"]) == k
                       and x["head"] == head)
            return v[len(v) // 2]
        print(f"{k}: {med(0, 'events_us'):.2f} · {med(0, 'kernel_us'):.2f} -> "
              f"{med(1, 'events_us'):.2f} · {med(1, 'kernel_us'):.2f}  "
              f"({med(0, 'pct_copy')} -> {med(1, 'pct_copy')}% by events)")
    if args.json:
        write_json(args.json, {**env_record(torch.device("cuda")),
                               "reproduce": "python benchmarks/probe_head.py (with "
                               "benchmarks/patches/head-one-round-trip.patch applied)"}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
