"""Expand with ``out`` read and written in the MMA's own register layout (Gluon, GPU).

    python benchmarks/probe_expand_gluon.py [--json PATH] [--shapes expand:8192:64,...]

The shipped Triton expand loads ``out`` in a coalesced layout and the dot's result arrives in
the MMA layout, so every step moves the ``[BM, BN]`` delta through shared memory (seventh
session: the dot step costs 9-23 points of copy bandwidth). Gluon (Triton >= 3.5) fixes the
layouts by hand: here ``out`` is loaded and stored in the ``mma.sync`` accumulator layout
(two 16-bit elements per thread and row), ``y`` in the A-operand layout and ``B`` either
straight from global memory in the B-operand layout (``BMODE=0``) or coalesced and converted
(``BMODE=1``), so a step needs no shared memory at all with ``BMODE=0``. ``DOT=0`` drops
``y``, ``B`` and the MMA (``out += 1``): the ceiling of the layout's own ``out`` stream.

Every variant with the dot is checked against the shipped kernel's output; timed with a
cold L2 (median); % of the 1 GiB copy bandwidth from the op's minimal bytes.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from lora_dispatch.bench.kernels import (
    checked_time,
    expand_case,
    probe_main,
    shipped_expand_row,
)
from lora_dispatch.kernels.triton import launch as L
from lora_dispatch.kernels.triton.tiles import slice_block, tile_head

_SHAPES = "expand:8192:64,expand:8192:16,qkv_expand:8192:64,expand:2048:64"


@gluon.jit
def _rows(start, end, tok_ptr, T, BM: gl.constexpr, layout: gl.constexpr):
    """``tiles.tile_rows`` with an explicit layout (Gluon's ``arange`` needs one)."""
    offs_m = start + gl.arange(0, BM, layout=layout)  # [BM]
    tok = gl.load(tok_ptr + offs_m, mask=offs_m < end, other=T)  # [BM]
    m_mask = (tok >= 0) & (tok < T)  # [BM]
    return m_mask, gl.where(m_mask, tok, 0).to(gl.int64)


@gluon.jit
def expand_gluon_kernel(
    y_ptr, b_ptr, out_ptr, ranks_ptr, bounds_ptr, tok_ptr, tiles_ptr,
    T, L, NT, N, NB,
    stride_yp, stride_ys, stride_yt, stride_yr, stride_om, stride_on,
    S: gl.constexpr, R: gl.constexpr, TILE: gl.constexpr, SPLIT: gl.constexpr,
    BM: gl.constexpr, BN: gl.constexpr, BR: gl.constexpr, NCOL: gl.constexpr,
    PREFETCH: gl.constexpr, ALIGN: gl.constexpr,
    WM: gl.constexpr, WN: gl.constexpr, BMODE: gl.constexpr, DOT: gl.constexpr,
    KW: gl.constexpr = 2,
):
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WM, WN],
                                                  instr_shape=[16, 8])
    AL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=KW)
    BL: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=KW)
    CO: gl.constexpr = gl.BlockedLayout([8, 1], [8, 4], [1, WM * WN], [0, 1])  # [BR, BN]

    pid = gl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
    sl, c0, c1 = slice_block(bounds_ptr, pid_n, S, BN * NCOL, ALIGN)
    m_mask, tok64 = _rows(start, end, tok_ptr, T, BM, gl.SliceLayout(1, MMA))  # [BM]
    if rank == 0:
        return

    o_rows = out_ptr + tok64[:, None] * stride_om  # [BM, 1]
    cols = gl.arange(0, BN, layout=gl.SliceLayout(0, MMA))  # [BN]
    if PREFETCH:
        offs_n = c0 + cols
        o = gl.load(o_rows + offs_n[None, :] * stride_on,
                    mask=m_mask[:, None] & (offs_n < c1)[None, :], other=0.0)  # [BM, BN]
    if DOT:
        ma, ta = _rows(start, end, tok_ptr, T, BM, gl.SliceLayout(1, AL))  # [BM]
        offs_ra = gl.arange(0, BR, layout=gl.SliceLayout(0, AL))  # [BR]
        y_ptrs = (y_ptr + sl * stride_ys + ta[:, None] * stride_yt
                  + offs_ra[None, :] * stride_yr)  # [BM, BR]
        ym = ma[:, None] & (offs_ra < rank)[None, :]
        yb = gl.load(y_ptrs, mask=ym, other=0.0).to(gl.float32)  # [BM, BR]
        for p in gl.static_range(1, SPLIT):
            yb += gl.load(y_ptrs + p * stride_yp, mask=ym, other=0.0).to(gl.float32)
        yb = yb.to(b_ptr.dtype.element_ty)
        if BMODE == 0:
            offs_rb = gl.arange(0, BR, layout=gl.SliceLayout(1, BL))  # [BR]
            cols_b = gl.arange(0, BN, layout=gl.SliceLayout(0, BL))  # [BN]
        else:
            offs_rb = gl.arange(0, BR, layout=gl.SliceLayout(1, CO))  # [BR]
            cols_b = gl.arange(0, BN, layout=gl.SliceLayout(0, CO))  # [BN]
        b_base = b_ptr + slot.to(gl.int64) * N * R + offs_rb[:, None]  # [BR, 1]

    for j in range(NCOL):
        offs_n = c0 + j * BN + cols  # [BN]
        n_mask = offs_n < c1
        mask = m_mask[:, None] & n_mask[None, :]  # [BM, BN]
        o_ptrs = o_rows + offs_n[None, :] * stride_on  # [BM, BN]
        if PREFETCH:
            nxt = (offs_n + BN < c1) & (j + 1 < NCOL)
            o_next = gl.load(o_rows + (offs_n + BN)[None, :] * stride_on,
                             mask=m_mask[:, None] & nxt[None, :], other=0.0)
        else:
            o = gl.load(o_ptrs, mask=mask, other=0.0)  # [BM, BN]
        if DOT:
            nb = c0 + j * BN + cols_b  # [BN]
            bb = gl.load(b_base + nb[None, :].to(gl.int64) * R,
                         mask=(offs_rb < R)[:, None] & (nb < c1)[None, :], other=0.0)
            if BMODE != 0:
                bb = gl.convert_layout(bb, BL)
            acc = mma_v2(yb, bb, gl.zeros([BM, BN], gl.float32, MMA))  # [BM, BN]
            res = o.to(gl.float32) + acc.to(o.dtype).to(gl.float32)
        else:
            res = o.to(gl.float32) + 1.0
        gl.store(o_ptrs, res.to(o.dtype), mask=mask)
        if PREFETCH:
            o = o_next


_CONFIGS = (  # BM, BN, NCOL, warps (WM, WN), BMODE, PREFETCH, k_width
    (64, 64, 8, (4, 1), 0, False, 2), (64, 64, 8, (4, 1), 0, False, 8),
    (64, 64, 8, (4, 1), 1, False, 2), (64, 64, 8, (4, 1), 0, True, 8),
    (64, 64, 8, (2, 2), 0, False, 8), (64, 64, 8, (1, 4), 0, False, 8),
    (64, 64, 8, (1, 4), 0, True, 8), (64, 64, 4, (1, 4), 0, False, 8),
    (64, 128, 4, (2, 4), 0, False, 8), (64, 128, 4, (1, 8), 0, False, 8),
    (128, 64, 8, (2, 4), 0, False, 8), (128, 64, 8, (8, 1), 0, False, 8),
    (32, 128, 4, (1, 4), 0, False, 8), (32, 64, 8, (1, 4), 0, False, 8),
    (32, 64, 8, (2, 2), 0, False, 8), (16, 64, 8, (1, 4), 0, False, 8),
)


def _shape(spec: str, dev: torch.device, copy: float, rows: list[dict],
           _args: object = None) -> None:
    case = expand_case(spec, dev)
    p, batch, w, y4, out, default, nbytes = case
    pristine, ref = shipped_expand_row(spec, case, dev, copy, rows)
    for bm, bn, ncol, (wm, wn), bmode, pf, kw in _CONFIGS:
        cfg = type(default)(bm, bn, default.block_r, wm * wn, 1, ncol, pf)
        plan = L._expand_plan(w, p.t, 1, cfg=cfg)
        args = L._expand_args(plan, y4, w, batch, out, out.stride(), p.t, y4.stride())
        cx = {k: v for k, v in plan.meta.items()
              if k not in ("num_warps", "num_stages", "PREC", "PDL", "TRIM")}
        for dot in (1, 0):
            def launch(o, args=args, cx=cx, plan=plan, dot=dot, wm=wm, wn=wn, bmode=bmode, kw=kw):
                a = (*args[:2], o, *args[3:])
                expand_gluon_kernel[plan.grid](*a, **cx, WM=wm, WN=wn, BMODE=bmode, DOT=dot, KW=kw,
                                               num_warps=wm * wn)
            res = checked_time(launch, out, pristine, ref, dev, bool(dot),
                               f"{spec} {cfg} bmode {bmode} dot {dot}")
            if res is None:
                continue
            err, us = res
            gbs = nbytes / (us * 1e-6) / 1e9
            rows.append(dict(kind="gluon", op=p.op, T=p.t, rank=p.rank, us=us, gbs=gbs,
                             pct_copy=100 * gbs / copy, wm=wm, wn=wn, bmode=bmode, dot=dot, kw=kw,
                             max_diff_vs_shipped=err, grid=plan.grid[0], **cfg.__dict__))
            print(f"{spec:>20} gluon {bm}x{bn} ncol {ncol} w {wm}x{wn} bmode {bmode} "
                  f"pf {int(pf)} kw {kw} dot {dot}: {us:7.1f} us {100 * gbs / copy:5.1f}%"
                  f"{'' if err is None else f'  err {err:.3g}'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, _SHAPES, _shape)


if __name__ == "__main__":
    raise SystemExit(main())
