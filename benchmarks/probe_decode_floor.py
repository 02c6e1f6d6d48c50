"""How close the decode expands are to the floor of their output's read-modify-write (GPU).

    python benchmarks/probe_decode_floor.py [--json PATH] [--tokens 1,16,64] [--adapters 1,4]

At decode the expand's bytes are ``out`` read and written plus each used adapter's ``B``;
for gate_up (28672 columns) at T=64 that is 7.3 MB of ``out`` against 0.9 MB of ``B`` a
rank-16 adapter. This replays, from one CUDA graph each (the benchmark's method), the public
expand of ``expand`` / ``qkv_expand`` / ``gate_up_expand`` (bf16, hidden 4096, rank 16) beside
``out.add_(1)`` and ``out.copy_(src)`` on the same ``out``: the time a kernel needs just to
stream those bytes at that size, launch and ramp included.
"""

from __future__ import annotations

import argparse

import torch

import lora_dispatch as ld
from lora_dispatch.bench.kernels import Problem, _build, min_bytes
from lora_dispatch.bench.timing import (
    copy_bandwidth_gbs,
    env_record,
    graph_time_us,
    pct_of_copy,
    write_json,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="1,16,64")
    ap.add_argument("--adapters", default="1,4")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    print(f"copy bandwidth (1 GiB) {copy:.0f} GB/s", flush=True)
    rows = []
    for op in ("expand", "qkv_expand", "gate_up_expand"):
        for t in (int(v) for v in args.tokens.split(",")):
            for adapters in (int(v) for v in args.adapters.split(",")):
                p = Problem(op, 4096, t, args.rank, adapters, torch.bfloat16, dev)
                batch, items = _build(p, 1)
                w, _, y, out = items[0]
                src = out.clone()
                fns = {"lora_expand": lambda y=y, w=w, b=batch, o=out: ld.lora_expand(y, w, b, o),
                       "out.add_(1)": lambda o=out: o.add_(1.0),
                       "out.copy_(src)": lambda o=out, s=src: o.copy_(s)}
                for name, fn in fns.items():
                    us = graph_time_us(fn, dev)
                    nbytes = min_bytes(p) if name == "lora_expand" else 2 * out.numel() * 2
                    row = dict(op=op, T=t, adapters=adapters, rank=args.rank, variant=name,
                               graph_us=round(us, 3), bytes=nbytes,
                               pct_copy=round(pct_of_copy(nbytes, us, copy), 1))
                    rows.append(row)
                    print(row, flush=True)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
