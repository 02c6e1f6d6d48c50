"""Sweep the Gluon shrink's tiling (token tile, K splits, ring depth) against the Triton shrink.

    python benchmarks/sweep_gluon_shrink.py [--json PATH] [--shapes qkv:64:8192,...] [--ab]

Each shape (``layer:rank:T``, layer ``qkv`` 4096 -> 4096+1024+1024, ``one`` 4096 -> 4096 or
``gate_up`` 4096 -> 14336+14336; bf16, 4 adapters in prefill segments) runs the shrink as
``add_lora`` launches it, into its float32 workspace of K-split partial products: first the
Triton kernel of the registry's config (``LORA_DISPATCH_GLUON=0``), then the Gluon kernel for
every ``(block_m, split_k, stages)`` whose ring fits, the one the registry picks marked
``auto``. Every variant's partials, NaN-poisoned first, must sum to the Triton kernel's
within 1e-3 (relative norm) before it is timed (cold L2, median of CUDA events). Percent of
copy bandwidth counts ``x`` and the used ``A`` once and ``y`` once per split.

``--ab`` times, per shape, only the registry's Gluon config beside the dense prototype of
``probe_shrink_gluon.py`` on one slot's ``A`` (same tiling), to see what the segmentation
costs; ``--adapters 1`` leaves the weights' bytes out of that difference.
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch

SHAPES = ("qkv:64:8192,qkv:64:6144,qkv:64:4096,qkv:64:2048,qkv:64:1024,qkv:16:8192,"
          "qkv:16:4096,qkv:16:2048,one:16:8192,one:64:8192,one:16:2048,gate_up:64:8192,"
          "gate_up:64:2048")
OUTS = {"qkv": (4096, 1024, 1024), "one": (4096,), "gate_up": (14336, 14336)}


def _sweep(spec: str, dev: torch.device, copy: float, rows: list[dict], path: str | None,
           g: torch.Generator, ab: bool = False, adapters: int = 4, k: int = 4096) -> None:
    import lora_dispatch as ld
    from lora_dispatch.batch import tile_index
    from lora_dispatch.bench.timing import env_record, gpu_time_us, write_json
    from lora_dispatch.devices import configs
    from lora_dispatch.devices.info import describe
    from lora_dispatch.kernels.triton import launch as L

    layer, rank, t = spec.split(":")
    rank, t = int(rank), int(t)
    outs = OUTS[layer]
    s = len(outs)
    w = ld.LoRAWeights(adapters, k, outs, rank, dtype=torch.bfloat16, device=dev)
    for slot in range(adapters):
        w.load(slot, [torch.randn(rank, k, generator=g, device=dev) / 64 for _ in outs],
               [torch.randn(o, rank, generator=g, device=dev) for o in outs], 0.5)
    per = -(-t // adapters)
    batch = ld.LoRABatch.from_segments([1] * t, [min(i // per, adapters - 1) for i in range(t)],
                                       device=dev)
    x = torch.randn(t, k, generator=g, device=dev).to(torch.bfloat16)

    def record(kind, cfg, us, split, err=None):
        nbytes = t * k * 2 + adapters * s * rank * k * 2 + 4 * split * s * t * rank
        row = dict(shape=spec, kind=kind, cfg=cfg, split=split, us=round(us, 2),
                   pct_copy=round(100 * nbytes / us / 1e3 / copy, 1), err=err)
        row["adapters"] = adapters
        rows.append(row)
        print(row, flush=True)
        if path:
            write_json(path, {**env_record(dev), "copy_gbs": copy}, rows)

    os.environ["LORA_DISPATCH_GLUON"] = "0"
    base = L._shrink_plan(w, t, atomic=False)
    ws = torch.empty(base.split, s, t, rank, device=dev)
    L._launch_shrink(base, x, w, batch, ws, t)
    ref = ws.sum(0)  # [S, T, R]
    us = gpu_time_us(lambda: L._launch_shrink(base, x, w, batch, ws, t), dev, warmup_ms=5,
                     rep_ms=20)
    record("triton", str(base.cx[3:7]), us, base.split)
    os.environ["LORA_DISPATCH_GLUON"] = "auto"
    auto = configs.shrink_gluon(describe(dev), t, k, s, rank, 2, True)
    br = max(16, configs.next_pow2(rank))
    os.environ["LORA_DISPATCH_GLUON"] = "1"
    if ab:
        _ab(spec, auto, w, x, batch, ref, t, s, rank, k, dev, record)
        os.environ.pop("LORA_DISPATCH_GLUON", None)
        return
    for bm, split, stages in itertools.product((64, 128), (1, 2, 4), (4, 5, 6)):
        if stages * (bm + s * br) * 64 * 2 > 224 << 10:
            continue
        cfg = configs.GluonShrinkConfig(bm, 64, br, stages, bm // 16, split)
        p = L._shrink_plan(w, t, atomic=False, split_k=split).alt
        gp = L.GluonPlan((L._tiles(t, bm, adapters), p.split), cfg,
                         (s, rank, tile_index(bm), stages, False, False, True, False), True,
                         L.x_tile(bm, 64, x.dtype))
        wsg = torch.empty(p.split, s, t, rank, device=dev)

        def run(gp=gp, p=p, wsg=wsg):
            L._launch_shrink_gluon(gp, p.k_split, x, w, batch, wsg, t, wsg.stride()[:3])
        name = [bm, split, stages]
        try:
            wsg.fill_(float("nan"))
            run()
            err = ((wsg.sum(0) - ref).norm() / ref.norm()).item()
            if not err < 1e-3:
                print(f"{spec} {name}: wrong result (rel {err:.3g})", flush=True)
                continue
            us = gpu_time_us(run, dev, warmup_ms=5, rep_ms=20)
        except Exception as exc:  # a variant that fails to build is reported, not fatal
            print(f"{spec} {name} failed: {exc!r}"[:300], flush=True)
            continue
        kind = "gluon_auto" if auto is not None and cfg == auto else "gluon"
        record(kind, name, us, p.split, round(err, 7))
    os.environ.pop("LORA_DISPATCH_GLUON", None)


def _ab(spec, cfg, w, x, batch, ref, t, s, rank, k, dev, record) -> None:
    import importlib.util
    import pathlib

    from lora_dispatch.batch import tile_index
    from lora_dispatch.bench.timing import gpu_time_us
    from lora_dispatch.kernels.triton import launch as L

    p = L._shrink_plan(w, t, atomic=False, split_k=cfg.split_k).alt
    gp = L.GluonPlan((L._tiles(t, cfg.block_m, w.num_slots), p.split), cfg,
                     (s, rank, tile_index(cfg.block_m), cfg.stages, False, False, True, False),
                     True, L.x_tile(cfg.block_m, cfg.block_k, x.dtype))
    wsg = torch.empty(p.split, s, t, rank, device=dev)
    name = [cfg.block_m, cfg.split_k, cfg.stages]

    def run():
        L._launch_shrink_gluon(gp, p.k_split, x, w, batch, wsg, t, wsg.stride()[:3])
    wsg.fill_(float("nan"))
    run()
    err = ((wsg.sum(0) - ref).norm() / ref.norm()).item()
    record("gluon", name, gpu_time_us(run, dev, 5, 20), p.split, round(err, 7))
    path = pathlib.Path(__file__).with_name("probe_shrink_gluon.py")
    spec_ = importlib.util.spec_from_file_location("probe_shrink_gluon", path)
    probe = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(probe)
    a = w.lora_a[0, : s * rank]  # [S * R, K] one slot
    xd, ad = probe._descs(x, a, cfg.block_m, cfg.block_k, cfg.block_r)
    y = torch.empty(p.split, t, s * rank, device=dev)
    grid = (-(-t // cfg.block_m), p.split)

    def dense():
        probe.gemm_ws_kernel[grid](xd, ad, y, t, s * rank, p.k_split, NB=s, STAGES=cfg.stages,
                                   num_warps=cfg.num_warps)
    try:
        dense()
        record("dense_probe", name, gpu_time_us(dense, dev, 5, 20), p.split)
    except Exception as exc:  # report and go on
        print(f"{spec} dense probe failed: {exc!r}"[:300], flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--ab", action="store_true")
    ap.add_argument("--adapters", type=int, default=4)
    args = ap.parse_args(argv)

    from lora_dispatch.bench.timing import copy_bandwidth_gbs

    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    rows: list[dict] = []
    g = torch.Generator(device=dev).manual_seed(0)
    for spec in args.shapes.split(","):
        _sweep(spec, dev, copy, rows, args.json, g, args.ab, args.adapters)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
