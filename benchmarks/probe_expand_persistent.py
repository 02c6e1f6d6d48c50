"""Prefill expand: one-shot grid vs a persistent kernel, and the streaming ceilings (GPU).

    python benchmarks/probe_expand_persistent.py [--json PATH] [--shapes expand:8192:16,...]

Ceilings, timed the same way as the kernels (cold L2, median):
  - ``copy 1 GiB`` (the benchmark's reference), ``copy`` of one ``out`` (same bytes as an
    expand's ``out`` read + write), ``out.add_(1)`` (torch read-modify-write) and a Triton
    read-modify-write kernel over ``out`` with the expand's tiles (no dot, no ``B``, no ``y``);
  - reads alone: ``sum`` over 1 GiB and over one ``x [T, 4096]``.
Then per shape: the shipped config and a persistent kernel (defined here: a fixed grid walks
(tile, ``BN`` columns) items and loads the next item's ``out`` tile before it computes the
current one) over BM x BN x warps x programs per compute unit. GB/s from the minimal bytes
over the 1 GiB copy bandwidth. Every variant's output is checked against the shipped kernel
on the same input.

Sixth session, H200 (``probe-expand-persistent-…json``): the persistent kernel lost on every
shape (expand r16 T=8192: 50.6 us best against 40.7 shipped; qkv r64: 107.6 against 65.0),
so it was not shipped.
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from lora_dispatch.bench.kernels import checked_time, expand_case, probe_main
from lora_dispatch.bench.timing import gpu_time_us
from lora_dispatch.devices import configs as C
from lora_dispatch.kernels.triton import launch as L
from lora_dispatch.kernels.triton.tiles import slice_block, tile_rows

_SHAPES = ("expand:8192:16,expand:8192:64,qkv_expand:8192:16,qkv_expand:8192:64,"
           "gate_up_expand:8192:64,expand:2048:16,qkv_expand:2048:64")


@triton.jit
def _item(item, ITEMS, NB, tiles_ptr, tok_ptr, ranks_ptr, bounds_ptr, T, L, NT,
          S: tl.constexpr, TILE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
          ALIGN: tl.constexpr):
    """Slot, rank (0 for dead items), slice, columns ``[BN]`` + mask, rows ``[BM]`` + mask."""
    live = item < ITEMS
    pid_m = tl.where(live, item // NB, 0)
    tile = tiles_ptr + TILE * 3 * NT + pid_m
    slot = tl.load(tile)
    ok = live & (slot >= 0) & (slot < L)
    slot = tl.where(ok, slot, 0)
    rank = tl.where(ok, tl.load(ranks_ptr + slot), 0)
    sl, c0, c1 = slice_block(bounds_ptr, item % NB, S, BN, ALIGN)
    offs_n = c0 + tl.arange(0, BN)  # [BN]
    m_mask, tok64 = tile_rows(tl.load(tile + NT), tl.load(tile + 2 * NT), tok_ptr, T, BM)
    return slot, rank, sl, offs_n, offs_n < c1, m_mask & (rank > 0), tok64


@triton.jit
def _delta(y_ptr, b_ptr, slot, rank, sl, offs_n, n_mask, m_mask, tok64, N,
           stride_yp, stride_ys, stride_yt, stride_yr,
           R: tl.constexpr, SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
           BR: tl.constexpr, PREC: tl.constexpr):
    """``y[sl, rows, :rank] @ B[slot, cols, :rank]^T`` in float32, ``[BM, BN]``."""
    offs_r = tl.arange(0, BR)  # [BR]
    y_ptrs = y_ptr + sl * stride_ys + tok64[:, None] * stride_yt + offs_r[None, :] * stride_yr
    b_ptrs = (b_ptr + slot.to(tl.int64) * N * R + offs_n[None, :].to(tl.int64) * R
              + offs_r[:, None])  # [BR, BN]
    b_live = n_mask[None, :] & (rank > 0)  # [1, BN]
    acc = tl.zeros((BM, BN), dtype=tl.float32)  # [BM, BN]
    for r0 in tl.static_range(0, R, BR):
        ym = m_mask[:, None] & ((offs_r + r0) < rank)[None, :]  # [BM, BR]
        yr = tl.load(y_ptrs + r0 * stride_yr, mask=ym, other=0.0).to(tl.float32)  # [BM, BR]
        for p in tl.static_range(1, SPLIT):
            yr += tl.load(y_ptrs + r0 * stride_yr + p * stride_yp, mask=ym,
                          other=0.0).to(tl.float32)
        bb = tl.load(b_ptrs + r0, mask=((offs_r + r0) < R)[:, None] & b_live,
                     other=0.0)  # [BR, BN]
        acc += tl.dot(yr.to(bb.dtype), bb, input_precision=PREC)  # [BM, BN]
    return acc


@triton.jit
def expand_persistent_kernel(
    y_ptr, b_ptr, out_ptr, ranks_ptr, bounds_ptr, tok_ptr, tiles_ptr,
    T, L, NT, N, NB,
    stride_yp, stride_ys, stride_yt, stride_yr, stride_om, stride_on,
    S: tl.constexpr, R: tl.constexpr, TILE: tl.constexpr, SPLIT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr,
    ALIGN: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    ITEMS = NB * ((T + BM - 1) // BM + tl.minimum(T, L))
    slot, rank, sl, offs_n, n_mask, m_mask, tok64 = _item(
        pid, ITEMS, NB, tiles_ptr, tok_ptr, ranks_ptr, bounds_ptr, T, L, NT, S, TILE, BM, BN,
        ALIGN)
    o = tl.load(out_ptr + tok64[:, None] * stride_om + offs_n[None, :] * stride_on,
                mask=m_mask[:, None] & n_mask[None, :], other=0.0)  # [BM, BN]
    for item in range(pid, ITEMS, step):
        slot2, rank2, sl2, offs_n2, n_mask2, m_mask2, tok642 = _item(
            item + step, ITEMS, NB, tiles_ptr, tok_ptr, ranks_ptr, bounds_ptr, T, L, NT, S,
            TILE, BM, BN, ALIGN)
        o2 = tl.load(out_ptr + tok642[:, None] * stride_om + offs_n2[None, :] * stride_on,
                     mask=m_mask2[:, None] & n_mask2[None, :], other=0.0)  # [BM, BN]
        acc = _delta(y_ptr, b_ptr, slot, rank, sl, offs_n, n_mask, m_mask, tok64, N,
                     stride_yp, stride_ys, stride_yt, stride_yr, R, SPLIT, BM, BN, BR, PREC)
        tl.store(out_ptr + tok64[:, None] * stride_om + offs_n[None, :] * stride_on,
                 (o.to(tl.float32) + acc).to(o.dtype), mask=m_mask[:, None] & n_mask[None, :])
        slot, rank, sl, offs_n, n_mask, m_mask, tok64, o = (
            slot2, rank2, sl2, offs_n2, n_mask2, m_mask2, tok642, o2)


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


def _configs(default: C.ExpandConfig) -> list[tuple[C.ExpandConfig, int]]:
    """(config, programs per compute unit; 0 = the shipped one-shot kernel)."""
    out = [(default, 0)]
    for bm, bn, warps, ppu in itertools.product((32, 64), (64, 128), (4, 8), (2, 4, 8)):
        out.append((C.ExpandConfig(bm, bn, default.block_r, warps, 1, 1), ppu))
    return out


def _launcher(w, batch, t: int, cfg: C.ExpandConfig, ppu: int, y4, units: int):
    plan = L._expand_plan(w, t, 1, cfg=cfg)
    if not ppu:
        return plan.grid[0], lambda out: L._launch_expand(plan, y4, w, batch, out, t)
    grid = (min(plan.grid[0], ppu * units),)
    cx = {k: v for k, v in plan.meta.items()
          if k not in ("NCOL", "PREFETCH", "PDL", "num_warps", "num_stages")}

    def launch(out):
        args = L._expand_args(plan, y4, w, batch, out, out.stride(), t, y4.stride())
        expand_persistent_kernel[grid](*args, **cx, num_warps=cfg.num_warps, num_stages=1)
    return grid[0], launch


def _shape(spec: str, dev: torch.device, copy: float, rows: list[dict],
           _args: object = None) -> None:
    p, batch, w, y4, out, default, nbytes = expand_case(spec, dev)
    op, t, rank = p.op, p.t, p.rank
    units = torch.cuda.get_device_properties(dev).multi_processor_count
    pristine = out.clone()
    ref = out.clone()
    _launcher(w, batch, t, default, 0, y4, units)[1](ref)
    best = None
    for cfg, ppu in _configs(default):
        grid, launch = _launcher(w, batch, t, cfg, ppu, y4, units)
        res = checked_time(launch, out, pristine, ref, dev, what=f"{spec} {cfg}")
        if res is None:
            continue
        err, us = res
        gbs = nbytes / (us * 1e-6) / 1e9
        r = dict(kind="expand", op=op, T=t, rank=rank, default=not ppu, us=us, gbs=gbs,
                 pct_copy=100 * gbs / copy, max_diff_vs_shipped=err, grid=grid,
                 programs_per_unit=ppu, **cfg.__dict__)
        rows.append(r)
        if best is None or us < best["us"]:
            best = r
        if not ppu:
            print(f"{spec}: shipped {cfg} {us:.1f} us {r['pct_copy']:.0f}%", flush=True)
    print(f"{spec}: best {best}", flush=True)


def main(argv: list[str] | None = None) -> int:
    def extra(ap):
        ap.add_argument("--no-ceilings", action="store_true")

    def before(args, dev, copy, rows):
        if not args.no_ceilings:
            _ceilings(dev, copy, rows)

    return probe_main(argv, __doc__, _SHAPES, _shape, extra, before)


if __name__ == "__main__":
    raise SystemExit(main())
