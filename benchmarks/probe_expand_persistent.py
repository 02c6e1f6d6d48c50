"""Prefill expand: one-shot grid vs the persistent kernel, and the streaming ceilings (GPU).

    python benchmarks/probe_expand_persistent.py [--json PATH] [--shapes expand:8192:16,...]

Ceilings, timed the same way as the kernels (cold L2, median):
  - ``copy 1 GiB`` (the benchmark's reference), ``copy`` of one ``out`` (same bytes as an
    expand's ``out`` read + write), ``out.add_(1)`` (torch read-modify-write) and a Triton
    read-modify-write kernel over ``out`` with the expand's tiles (no dot, no ``B``, no ``y``);
  - reads alone: ``sum`` over 1 GiB and over one ``x [T, 4096]``.
Then per shape: the shipped config and persistent configs (BM x BN x warps x programs per
compute unit). GB/s from the minimal bytes over the 1 GiB copy bandwidth.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton
import triton.language as tl

from lora_dispatch.bench.kernels import Problem, _build, min_bytes
from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, gpu_time_us, write_json
from lora_dispatch.devices import configs as C
from lora_dispatch.devices import current
from lora_dispatch.kernels.triton import launch as L

_SHAPES = ("expand:8192:16,expand:8192:64,qkv_expand:8192:16,qkv_expand:8192:64,"
           "gate_up_expand:8192:64,expand:2048:16,qkv_expand:2048:64")


@triton.jit
def _rmw_kernel(o_ptr, M, N, stride, BM: tl.constexpr, BN: tl.constexpr):
    nb = tl.cdiv(N, BN)
    pid = tl.program_id(0)
    rows = (pid // nb) * BM + tl.arange(0, BM)  # [BM]
    cols = (pid % nb) * BN + tl.arange(0, BN)  # [BN]
    mask = (rows < M)[:, None] & (cols < N)[None, :]  # [BM, BN]
    ptrs = o_ptr + rows[:, None].to(tl.int64) * stride + cols[None, :]  # [BM, BN]
    o = tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, (o.to(tl.float32) + 1.0).to(o.dtype), mask=mask)


def _ceilings(dev: torch.device, copy: float, rows: list[dict]) -> None:
    def row(kind: str, config: str, nbytes: int, fn) -> None:
        us = gpu_time_us(fn, dev, warmup_ms=5, rep_ms=30)
        gbs = nbytes / (us * 1e-6) / 1e9
        rows.append(dict(kind=kind, config=config, us=us, gbs=gbs, pct_copy=100 * gbs / copy))
        print(f"{kind:>10} {config:<28} {us:8.2f} us {100 * gbs / copy:5.1f}%", flush=True)

    big = torch.ones(1 << 28, dtype=torch.float32, device=dev)  # 1 GiB
    row("read", "sum 1 GiB fp32", big.numel() * 4, big.sum)
    del big
    for t, n in ((8192, 4096), (8192, 6144), (2048, 4096)):
        o = torch.randn(t, n, device=dev).to(torch.bfloat16)
        o2 = torch.empty_like(o)
        nb = o.numel() * 2
        row("read", f"sum [{t},{n}] bf16", nb, lambda o=o: o.sum())
        row("copy", f"[{t},{n}] bf16", 2 * nb, lambda o=o, o2=o2: o2.copy_(o))
        row("rmw", f"add_ [{t},{n}] bf16", 2 * nb, lambda o=o: o.add_(1.0))
        for bm, bn, warps in itertools.product((16, 32, 64), (128, 256), (4, 8)):
            grid = (triton.cdiv(t, bm) * triton.cdiv(n, bn),)
            row("rmw", f"triton [{t},{n}] {bm}x{bn} w{warps}", 2 * nb,
                lambda o=o, t=t, n=n, bm=bm, bn=bn, w=warps, g=grid: _rmw_kernel[g](
                    o, t, n, o.stride(0), BM=bm, BN=bn, num_warps=w, num_stages=1))


def _configs(default: C.ExpandConfig) -> list[C.ExpandConfig]:
    out = [default]
    for bm, bn, warps, ppu in itertools.product((32, 64), (64, 128), (4, 8), (2, 4, 8)):
        out.append(C.ExpandConfig(bm, bn, default.block_r, warps, 1, 1, ppu))
    return out


def _shape(spec: str, dev: torch.device, copy: float, rows: list[dict]) -> None:
    op, t, rank = spec.split(":")
    t, rank = int(t), int(rank)
    p = Problem(op, 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, _, y, out = items[0]
    y4 = y.unsqueeze(0)
    default = C.expand_config(current(dev), t, w.total_out, w.max_rank, 2)
    nbytes = min_bytes(p)
    ref = out.clone()
    plan = L._expand_plan(w, t, 1, cfg=default)
    L._launch_expand(plan, y4, w, batch, ref, t)
    best = None
    for cfg in _configs(default):
        plan = L._expand_plan(w, t, 1, cfg=cfg)
        chk = out.clone()
        try:
            L._launch_expand(plan, y4, w, batch, chk, t)
            us = gpu_time_us(lambda plan=plan: L._launch_expand(plan, y4, w, batch, out, t),
                             dev, warmup_ms=5, rep_ms=20)
        except Exception as exc:  # configs that fail to compile are skipped
            print(f"{spec} {cfg} failed: {exc!r}"[:200], flush=True)
            continue
        err = (chk.float() - ref.float()).abs().max().item()
        gbs = nbytes / (us * 1e-6) / 1e9
        r = dict(kind="expand", op=op, T=t, rank=rank, default=cfg == default, us=us, gbs=gbs,
                 pct_copy=100 * gbs / copy, max_diff_vs_shipped=err, grid=plan.grid[0],
                 **cfg.__dict__)
        rows.append(r)
        if best is None or us < best["us"]:
            best = r
        if cfg == default:
            print(f"{spec}: shipped {cfg} {us:.1f} us {r['pct_copy']:.0f}%", flush=True)
    print(f"{spec}: best {best}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=_SHAPES)
    ap.add_argument("--no-ceilings", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    print(f"copy bandwidth (1 GiB) {copy:.0f} GB/s", flush=True)
    rows: list[dict] = []
    if not args.no_ceilings:
        _ceilings(dev, copy, rows)
    for spec in args.shapes.split(","):
        _shape(spec, dev, copy, rows)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
