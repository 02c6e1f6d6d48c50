"""Where the public ``lora_shrink``'s decode time goes (GPU, CUDA-graph replay).

    python benchmarks/probe_shrink_decode.py [--json PATH] [--adapters 4]

For hidden 4096, rank 16 and 64, ``--adapters`` adapters (4), T = 1, 16, 64, 256 (the
benchmark's ``shrink`` rows) it replays, each from a CUDA graph of 20 calls:

- ``public``: ``lora_shrink`` as shipped (zero fill + split-K with atomics);
- ``memset``: the zero fill alone;
- ``atomic``: the split-K kernel alone, into a buffer zeroed once;
- ``single/BK/warps/stages``: one program per (tile, block) over all of K, plain stores
  (what a zero-filling single-pass kernel would cost);
- ``public/splitN``: the public op with ``N`` K splits instead of the configured number;
- ``partials/SPLIT``: the split-K kernel writing per-split partial products (what
  ``add_lora``'s shrink does), without the reduction;
- ``cfg/BKxWARPSxSTAGESxSPLIT`` (``--configs``): the public op's zero fill and split-K kernel
  with that config (16-token tiles), checked against the public op first.
"""

from __future__ import annotations

import argparse
import itertools

import torch

import lora_dispatch as ld
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import env_record, graph_time_us, write_json
from lora_dispatch.devices import configs as C
from lora_dispatch.devices import current
from lora_dispatch.kernels.triton import launch as L


def _probe(t: int, rank: int, dev: torch.device, single: bool = True,
           adapters: int = 4, configs: tuple = ()) -> dict:
    p = Problem("shrink", 4096, t, rank, adapters, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, _ = items[0]
    s, r = w.num_slices, w.max_rank
    res: dict[str, float | None] = {}
    res["public"] = graph_time_us(lambda: ld.lora_shrink(x, w, batch), dev)
    res["memset"] = graph_time_us(
        lambda: torch.zeros((s, t, r), dtype=torch.float32, device=dev), dev)
    ap_ = L.plan_for("shrink", w, t)
    yz = torch.zeros((ap_.split, s, t, r), device=dev)
    res[f"atomic/split{ap_.split}"] = graph_time_us(
        lambda: L._launch_shrink(ap_, x, w, batch, yz, t, (0, t * r, r, 1)), dev)
    for split in (4, 8, 16, 32):
        res[f"public/split{split}"] = graph_time_us(
            lambda split=split: L.shrink(x, w, batch, split_k=split), dev)
    for bk, warps, stages in itertools.product((128, 256, 512), (4, 8), (2, 4)):
        if not single:
            break
        if stages * (16 + 16) * bk * 2 > 200 * 1024:
            continue
        cfg = C.ShrinkConfig(16, max(16, min(64, C.next_pow2(r))), bk, 1, warps, stages)
        sp = L._shrink_plan(w, t, atomic=False, split_k=1, cfg=cfg)
        y1 = torch.empty((1, s, t, r), device=dev)
        try:
            res[f"single/{bk}/{warps}/{stages}"] = graph_time_us(
                lambda sp=sp, y1=y1: L._launch_shrink(sp, x, w, batch, y1, t), dev)
        except Exception as exc:
            print(f"T={t} r={rank} {cfg} failed: {exc!r}"[:200], flush=True)
    for split in (4, 8, 16):
        cfg = C.shrink_config(current(dev), t, 4096, r, 2, False, slices=s)
        sp = L._shrink_plan(w, t, atomic=False, split_k=split, cfg=cfg)
        yp = torch.empty((sp.split, s, t, r), device=dev)
        res[f"partials/{sp.split}"] = graph_time_us(
            lambda sp=sp, yp=yp: L._launch_shrink(sp, x, w, batch, yp, t), dev)
    for bk, warps, stages, split in configs:
        cfg = C.ShrinkConfig(16, max(16, min(64, C.next_pow2(r))), bk, split, warps, stages)
        sp = L._shrink_plan(w, t, atomic=True, split_k=split, cfg=cfg)

        def fill_and_shrink(sp=sp):
            y = torch.zeros((s, t, r), dtype=torch.float32, device=dev)
            L._launch_shrink(sp, x, w, batch, y, t, (0, t * r, r, 1))
            return y

        try:
            want = ld.lora_shrink(x, w, batch)
            err = ((fill_and_shrink() - want).norm() / want.norm()).item()
            if not err < 1e-3:
                print(f"T={t} r={rank} {cfg}: wrong ({err:.3g})", flush=True)
                continue
            res[f"cfg/{bk}x{warps}x{stages}x{sp.split}"] = graph_time_us(fill_and_shrink, dev)
        except Exception as exc:  # a config that fails to build is reported and skipped
            print(f"T={t} r={rank} {cfg} failed: {exc!r}"[:200], flush=True)
    best = min((k for k in res if k.startswith("single")), key=lambda k: res[k] or 1e9,
               default=None)
    print(f"T={t} r={rank} " + " ".join(
        f"{k}={v:.2f}" for k, v in res.items()
        if v is not None and (not k.startswith("single") or k == best)), flush=True)
    return dict(T=t, rank=rank, adapters=adapters, **res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="1,16,64,256")
    ap.add_argument("--ranks", default="16,64")
    ap.add_argument("--no-single", action="store_true", help="skip the single-pass variants")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--configs", default="",
                    help="public shrink configs BKxWARPSxSTAGESxSPLIT,... (zero fill + kernel)")
    args = ap.parse_args(argv)
    configs = tuple(tuple(map(int, c.split("x"))) for c in args.configs.split(",") if c)
    dev = torch.device("cuda")
    rows = []
    for rank, t in itertools.product(map(int, args.ranks.split(",")),
                                     map(int, args.tokens.split(","))):
        rows.append(_probe(t, rank, dev, single=not args.no_single, adapters=args.adapters,
                           configs=configs))
    if args.json:
        write_json(args.json, env_record(dev), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
