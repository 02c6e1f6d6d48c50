"""Where the prefill expand loses against a plain read-modify-write (GPU).

    python benchmarks/probe_expand_ablate.py [--json PATH] [--shapes expand:8192:64,...]

A copy of the shipped expand kernel with three switches, each removing one part of the work:

- ``HEAD=0``: no ``tile_map`` read; program ``m`` takes rows ``m * BM ...`` and its slot from
  the benchmark's layout (``T / L`` contiguous tokens per slot);
- ``GATHER=0``: no ``sorted_tokens`` read; a tile's rows are its token ids (true for the
  benchmark's in-order prefill segments);
- ``DOT=0``: no ``y`` or ``B`` read and no dot: ``out += 1``;
- ``DOT=2``: the dot's result is rounded to ``out``'s dtype before the add (so only the
  16-bit delta changes layout, not ``out`` into the dot's layout and the sum back);
- ``DOT=3``: ``y`` and ``B`` read as shipped, no dot: ``out += B block * sum(y)`` (needs
  ``BR == BM``). Meant as the ``B`` traffic without the MMA, but the ``y`` sum it adds per
  block cost more than the dot (H200: 46.6 µs against 42.2 shipped, expand r64 T=8192), so
  it does not isolate the MMA;
- ``DOT=4``: the dot and its layout change as shipped, but ``B`` computed in registers
  instead of read (no ``B`` traffic).

Every variant with the dot is compared with the shipped kernel's output (``DOT=2`` is the
shipped arithmetic since the seventh session, so it matches exactly for the benchmark's
layout at ``T % (L * BM) == 0``; ``DOT=1`` differs by the delta's rounding). Timed with a
cold L2 (median); GB/s from the op's minimal bytes over the 1 GiB copy bandwidth, for every
config in ``_configs`` (shipped first).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lora_dispatch.bench.kernels import checked_time, expand_case, probe_main
from lora_dispatch.devices import configs as C
from lora_dispatch.kernels.triton import launch as L
from lora_dispatch.kernels.triton.tiles import slice_block, tile_head, tile_rows

_SHAPES = "expand:8192:64,qkv_expand:8192:64,expand:2048:64"
_FLAGS = ((1, 1, 1), (1, 1, 2), (1, 0, 1), (0, 0, 1), (0, 0, 2), (1, 1, 0), (0, 0, 0),
          (1, 1, 3), (1, 1, 4))


@triton.jit
def expand_ablate_kernel(
    y_ptr, b_ptr, out_ptr, ranks_ptr, bounds_ptr, tok_ptr, tiles_ptr,
    T, L, NT, N, NB,
    stride_yp, stride_ys, stride_yt, stride_yr, stride_om, stride_on,
    S: tl.constexpr, R: tl.constexpr, TILE: tl.constexpr, SPLIT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, NCOL: tl.constexpr,
    PREFETCH: tl.constexpr, ALIGN: tl.constexpr, PREC: tl.constexpr,
    HEAD: tl.constexpr, GATHER: tl.constexpr, DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    if HEAD:
        slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
    else:
        start = pid_m * BM
        end = tl.minimum(start + BM, T)
        per = (T + L - 1) // L
        slot = tl.minimum(start // per, L - 1)
        rank = tl.where(start < T, R, 0)
    sl, c0, c1 = slice_block(bounds_ptr, pid_n, S, BN * NCOL, ALIGN)
    if GATHER:
        m_mask, tok64 = tile_rows(start, end, tok_ptr, T, BM)  # [BM], [BM]
    else:
        rows = start + tl.arange(0, BM)  # [BM]
        m_mask = rows < end
        tok64 = tl.where(m_mask, rows, 0).to(tl.int64)
    if rank == 0:
        return

    offs_r = tl.arange(0, BR)  # [BR]
    y_ptrs = y_ptr + sl * stride_ys + tok64[:, None] * stride_yt + offs_r[None, :] * stride_yr
    b_base = b_ptr + slot.to(tl.int64) * N * R + offs_r[:, None]  # [BR, 1]
    o_rows = out_ptr + tok64[:, None] * stride_om  # [BM, 1]
    if PREFETCH:
        offs_n = c0 + tl.arange(0, BN)  # [BN]
        o = tl.load(o_rows + offs_n[None, :] * stride_on,
                    mask=m_mask[:, None] & (offs_n < c1)[None, :], other=0.0)  # [BM, BN]
        if PREFETCH == 2:
            o1 = tl.load(o_rows + (offs_n + BN)[None, :] * stride_on,
                         mask=m_mask[:, None] & ((offs_n + BN < c1) & (1 < NCOL))[None, :],
                         other=0.0)  # [BM, BN]
    if DOT:
        ym = m_mask[:, None] & (offs_r < rank)[None, :]  # [BM, BR]
        yb = tl.load(y_ptrs, mask=ym, other=0.0).to(tl.float32)  # [BM, BR]
        for p in tl.static_range(1, SPLIT):
            yb += tl.load(y_ptrs + p * stride_yp, mask=ym, other=0.0).to(tl.float32)
        yb = yb.to(b_ptr.dtype.element_ty)

    for j in range(NCOL):
        offs_n = c0 + j * BN + tl.arange(0, BN)  # [BN]
        n_mask = offs_n < c1  # [BN]
        mask = m_mask[:, None] & n_mask[None, :]  # [BM, BN]
        o_ptrs = o_rows + offs_n[None, :] * stride_on  # [BM, BN]
        if PREFETCH == 2:
            nxt = (offs_n + 2 * BN < c1) & (j + 2 < NCOL)  # [BN]
            o_next = tl.load(o_rows + (offs_n + 2 * BN)[None, :] * stride_on,
                             mask=m_mask[:, None] & nxt[None, :], other=0.0)  # [BM, BN]
        elif PREFETCH:
            nxt = (offs_n + BN < c1) & (j + 1 < NCOL)  # [BN]
            o_next = tl.load(o_rows + (offs_n + BN)[None, :] * stride_on,
                             mask=m_mask[:, None] & nxt[None, :], other=0.0)  # [BM, BN]
        else:
            o = tl.load(o_ptrs, mask=mask, other=0.0)  # [BM, BN]
        if DOT == 4:
            bb = ((offs_r[:, None] + offs_n[None, :]) & 7).to(b_ptr.dtype.element_ty)
            acc = tl.dot(yb, bb, input_precision=PREC)  # [BM, BN]
        elif DOT:
            b_ptrs = b_base + offs_n[None, :].to(tl.int64) * R  # [BR, BN]
            bb = tl.load(b_ptrs, mask=(offs_r < R)[:, None] & n_mask[None, :], other=0.0)
            if DOT == 3:
                acc = bb.to(tl.float32) * tl.sum(tl.sum(yb.to(tl.float32), 1), 0)  # [BM, BN]
            else:
                acc = tl.dot(yb, bb, input_precision=PREC)  # [BM, BN]
        else:
            acc = tl.full((BM, BN), 1.0, dtype=tl.float32)  # [BM, BN]
        if DOT >= 2:
            tl.store(o_ptrs, (o.to(tl.float32) + acc.to(o.dtype).to(tl.float32)).to(o.dtype),
                     mask=mask)
        else:
            tl.store(o_ptrs, (o.to(tl.float32) + acc).to(o.dtype), mask=mask)
        if PREFETCH == 2:
            o = o1
            o1 = o_next
        elif PREFETCH:
            o = o_next


_ALTS = ((32, 128, 4, True), (32, 128, 8, True), (64, 64, 4, True), (64, 64, 8, True),
         (64, 64, 4, False), (64, 64, 8, False), (64, 128, 4, False), (64, 128, 8, False),
         (64, 128, 8, True))
# rank 64 at the shipped depth: two out blocks in flight (PREFETCH=2), wider / taller tiles,
# 1024 columns per program (half the programs, so half the tile prologues)
_ALTS_WIDE = ((64, 64, 4, 8, 2), (64, 128, 8, 8, 1), (128, 64, 8, 8, 1), (64, 64, 4, 16, 1),
              (64, 128, 4, 8, 1), (64, 128, 8, 16, 1), (64, 64, 4, 4, 1))


def _configs(default: C.ExpandConfig) -> list[tuple[C.ExpandConfig, tuple]]:
    """(config, switch settings): every switch for the shipped config, then alternatives
    with and without the tile prologue's reads."""
    out = [(default, _FLAGS)]
    for bm, bn, ncol, pf in _ALTS:
        cfg = C.ExpandConfig(bm, bn, default.block_r, 4, 1, ncol, pf)
        if cfg != default:
            out.append((cfg, _FLAGS[:2]))
    if default.block_r >= 64:
        for bm, bn, warps, ncol, pf in _ALTS_WIDE:
            cfg = C.ExpandConfig(bm, bn, default.block_r, warps, default.num_stages, ncol, pf)
            if cfg != default:
                out.append((cfg, ((1, 1, 2),)))
    return out


def _shape(spec: str, dev: torch.device, copy: float, rows: list[dict],
           _args: object = None) -> None:
    p, batch, w, y4, out, default, nbytes = expand_case(spec, dev)
    op, t, rank = p.op, p.t, p.rank
    pristine = out.clone()
    ref = out.clone()
    L._launch_expand(L._expand_plan(w, t, 1, cfg=default), y4, w, batch, ref, t)
    for cfg, flags in _configs(default):
        plan = L._expand_plan(w, t, 1, cfg=cfg)
        args = L._expand_args(plan, y4, w, batch, out, out.stride(), t, y4.stride())
        cx = {k: v for k, v in plan.meta.items()
              if k not in ("num_warps", "num_stages", "PDL")}
        for head, gather, dot in flags:
            if dot == 3 and cfg.block_m != cfg.block_r:
                continue
            def launch(o, args=args, cx=cx, plan=plan, f=(head, gather, dot)):
                a = (*args[:2], o, *args[3:])
                expand_ablate_kernel[plan.grid](*a, **cx, HEAD=f[0], GATHER=f[1], DOT=f[2],
                                                num_warps=plan.num_warps,
                                                num_stages=plan.num_stages)
            res = checked_time(launch, out, pristine, ref, dev, dot in (1, 2), f"{spec} {cfg}")
            if res is None:
                continue
            err, us = res
            gbs = nbytes / (us * 1e-6) / 1e9
            r = dict(kind="ablate", op=op, T=t, rank=rank, default=cfg == default, us=us,
                     gbs=gbs, pct_copy=100 * gbs / (copy or float("nan")), head=head,
                     gather=gather, dot=dot,
                     max_diff_vs_shipped=err, grid=plan.grid[0], **cfg.__dict__)
            rows.append(r)
            print(f"{spec:>20} {cfg.block_m:3d}x{cfg.block_n:<3d} ncol {cfg.col_blocks} "
                  f"pf {int(cfg.prefetch)} w {cfg.num_warps} st {cfg.num_stages} head {head} "
                  f"gather {gather} dot {dot}: {us:7.1f} us {r['pct_copy']:5.1f}%"
                  f"{'' if err is None else f'  err {err:.3g}'}"
                  f"{'  (shipped)' if cfg == default else ''}", flush=True)


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, _SHAPES, _shape)


if __name__ == "__main__":
    raise SystemExit(main())
