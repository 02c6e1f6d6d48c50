"""Expand with ``out`` streamed through shared memory by TMA (Gluon, Hopper, GPU).

    python benchmarks/probe_expand_tma.py [--json PATH] [--shapes qkv_expand:8192:64,...]

The seventh session's ablation put 9-23 points of the rank-64 expand in its dot step, and
the shipped kernel keeps the ``out`` blocks it has in flight in registers (one block
ahead at most, two programs per SM at 186 registers). Here each program keeps a ring of
``STAGES`` ``[BM, BN]`` ``out`` blocks and their ``[BN, R]`` ``B`` blocks in shared
memory, filled by TMA ``STAGES - 1`` blocks ahead; the wgmma takes ``y`` from registers
and ``B`` from the ring; ``out`` is read from shared memory straight in the accumulator's
layout (no register layout change) and the sum goes back by a TMA store from a second,
two-block ring (``INPLACE=1``: from the ring buffer itself, loads ``STAGES - 2`` ahead,
no second ring). Tiles whose tokens are not consecutive, or that end before ``BM`` rows
inside the batch, cannot use a TMA box for ``out``: with ``TMA_OUT=1`` their blocks go
through pointer loads and stores in a coalesced layout (one layout change of the delta, as
shipped); ``TMA_OUT=0`` sends every tile that way (``B`` still by TMA) and ``TMA_OUT=2``
compiles the pointer path out (correct only where every tile qualifies, as in these
prefill batches: one consecutive segment per adapter).

Every variant is checked against the shipped kernel's output and timed with a cold L2
(median); % of the 1 GiB copy bandwidth from the op's minimal bytes.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from lora_dispatch.bench.kernels import (
    checked_time,
    expand_case,
    probe_main,
    shipped_expand_row,
)
from lora_dispatch.kernels.triton import launch as L
from lora_dispatch.kernels.triton.tiles import slice_block, tile_head

_SHAPES = ("qkv_expand:8192:64,expand:8192:64,gate_up_expand:8192:64,qkv_expand:2048:64,"
           "expand:2048:64,qkv_expand:8192:16,expand:8192:16")


@gluon.jit
def _issue(j, o_desc, b_desc, o_bufs, b_bufs, ready, row, c0, brow, use_tma,
           STAGES: gl.constexpr):
    """TMA loads of column block ``j``: its ``B`` rows and, on the TMA path, its ``out`` box,
    into ring stage ``j % STAGES`` (one barrier for both, as the library kernel before its
    rings were split)."""
    BN: gl.constexpr = o_desc.block_type.shape[1]
    s = j % STAGES
    col = c0 + j * BN
    if use_tma:
        mbarrier.expect(ready.index(s), o_desc.block_type.nbytes + b_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(o_desc, [row, col], ready.index(s), o_bufs.index(s))
    else:
        mbarrier.expect(ready.index(s), b_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(b_desc, [brow + col, 0], ready.index(s), b_bufs.index(s))


@gluon.jit
def expand_tma_kernel(
    o_desc, b_desc, y_ptr, out_ptr, ranks_ptr, bounds_ptr, tok_ptr, tiles_ptr,
    T, L, NT, N, NB,
    stride_yp, stride_ys, stride_yt, stride_yr, stride_om, stride_on,
    S: gl.constexpr, TILE: gl.constexpr, SPLIT: gl.constexpr, NCOL: gl.constexpr,
    STAGES: gl.constexpr, ALIGN: gl.constexpr, PDL: gl.constexpr, TMA_OUT: gl.constexpr,
    INPLACE: gl.constexpr, num_warps: gl.constexpr,
):
    BM: gl.constexpr = o_desc.block_type.shape[0]
    BN: gl.constexpr = o_desc.block_type.shape[1]
    BR: gl.constexpr = b_desc.block_type.shape[1]
    dt: gl.constexpr = o_desc.dtype
    ACC: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BN, 16])
    AL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=ACC, k_width=2)
    TN: gl.constexpr = BN // 8
    CO: gl.constexpr = gl.BlockedLayout([1, 8], [32 // TN, TN], [num_warps, 1], [1, 0])

    pid = gl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
    sl, c0, c1 = slice_block(bounds_ptr, pid_n, S, BN * NCOL, ALIGN)
    if (rank == 0) | (end <= start):
        return
    n = end - start
    first = gl.load(tok_ptr + start)
    last = gl.load(tok_ptr + end - 1)
    if TMA_OUT:
        use_tma = (((last - first) == (n - 1)) & ((n == BM) | (last == T - 1))
                   & (first >= 0) & (last < T))
    else:
        use_tma = n < 0
    ncol = gl.minimum((c1 - c0 + BN - 1) // BN, NCOL)
    brow = slot * N

    o_bufs = gl.allocate_shared_memory(dt, [STAGES, BM, BN], o_desc.layout)
    b_bufs = gl.allocate_shared_memory(dt, [STAGES, BN, BR], b_desc.layout)
    if not INPLACE:
        c_bufs = gl.allocate_shared_memory(dt, [2, BM, BN], o_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
    fence_async_shared()
    AHEAD: gl.constexpr = STAGES - 2 if INPLACE else STAGES - 1
    for i in gl.static_range(AHEAD):
        if i < ncol:
            _issue(i, o_desc, b_desc, o_bufs, b_bufs, ready, first, c0, brow, use_tma, STAGES)

    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
    rows_a = start + gl.arange(0, BM, layout=gl.SliceLayout(1, AL))  # [BM]
    tok_a = gl.load(tok_ptr + rows_a, mask=rows_a < end, other=T)  # [BM]
    ma = (tok_a >= 0) & (tok_a < T)  # [BM]
    ta = gl.where(ma, tok_a, 0).to(gl.int64)  # [BM]
    offs_r = gl.arange(0, BR, layout=gl.SliceLayout(0, AL))  # [BR]
    y_ptrs = (y_ptr + sl * stride_ys + ta[:, None] * stride_yt
              + offs_r[None, :] * stride_yr)  # [BM, BR]
    ym = ma[:, None] & (offs_r < rank)[None, :]  # [BM, BR]
    yb = gl.load(y_ptrs, mask=ym, other=0.0)  # [BM, BR]
    for p in gl.static_range(1, SPLIT):
        yb += gl.load(y_ptrs + p * stride_yp, mask=ym, other=0.0)
    yb = yb.to(dt)

    rows_c = start + gl.arange(0, BM, layout=gl.SliceLayout(1, CO))  # [BM]
    tok_c = gl.load(tok_ptr + rows_c, mask=rows_c < end, other=T)  # [BM]
    mc = (tok_c >= 0) & (tok_c < T)  # [BM]
    o_rows = out_ptr + gl.where(mc, tok_c, 0).to(gl.int64)[:, None] * stride_om  # [BM, 1]
    cols = gl.arange(0, BN, layout=gl.SliceLayout(0, CO))  # [BN]
    zero = gl.zeros([BM, BN], gl.float32, ACC)  # [BM, BN]

    for j in range(ncol):
        s = j % STAGES
        if j + AHEAD < ncol:
            if INPLACE:  # the buffer's last TMA store (block j + AHEAD - STAGES) has read it
                tma.store_wait(1)
                gl.thread_barrier()
            _issue(j + AHEAD, o_desc, b_desc, o_bufs, b_bufs, ready, first, c0, brow,
                   use_tma, STAGES)
        mbarrier.wait(ready.index(s), (j // STAGES) & 1)
        acc = warpgroup_mma(yb, b_bufs.index(s).permute((1, 0)), zero, use_acc=False)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])  # [BM, BN]
        col = c0 + j * BN
        if use_tma:
            ob = o_bufs.index(s)
            o = ob.load(ACC)  # [BM, BN]
            r = (o.to(gl.float32) + acc.to(dt).to(gl.float32)).to(dt)  # [BM, BN]
            if INPLACE:
                gl.thread_barrier()
                ob.store(r)
                fence_async_shared()
                gl.thread_barrier()
                tma.async_copy_shared_to_global(o_desc, [first, col], ob)
            else:
                tma.store_wait(1)
                gl.thread_barrier()
                cb = c_bufs.index(j % 2)
                cb.store(r)
                fence_async_shared()
                gl.thread_barrier()
                tma.async_copy_shared_to_global(o_desc, [first, col], cb)
        elif TMA_OUT != 2:
            d = gl.convert_layout(acc.to(dt), CO)  # [BM, BN]
            o_ptrs = o_rows + (col + cols)[None, :] * stride_on  # [BM, BN]
            og = gl.load(o_ptrs, mask=mc[:, None], other=0.0)  # [BM, BN]
            gl.store(o_ptrs, (og.to(gl.float32) + d.to(gl.float32)).to(dt), mask=mc[:, None])
            gl.thread_barrier()
    tma.store_wait(0)


_CONFIGS = (  # BM, BN, NCOL, STAGES, warps, TMA_OUT (2: no pointer path), INPLACE
    (64, 64, 16, 4, 4, 1, 0), (64, 64, 16, 4, 4, 1, 1), (64, 64, 32, 4, 4, 1, 1),
    (64, 64, 32, 6, 4, 1, 1), (64, 64, 64, 4, 4, 1, 1), (64, 64, 32, 3, 4, 1, 0),
    (128, 64, 16, 4, 4, 1, 1), (128, 64, 32, 4, 4, 1, 1), (64, 128, 16, 4, 4, 1, 1),
)


def descriptors(out: torch.Tensor, b: torch.Tensor, bm: int, bn: int) -> tuple:
    """TMA descriptors of ``out [T, N]`` (tile ``[bm, bn]``) and ``B`` as ``[L * N, R]``
    (tile ``[bn, R]``)."""
    dt = gl.float16 if out.dtype == torch.float16 else gl.bfloat16
    b2 = b.view(-1, b.shape[-1])
    od = TensorDescriptor.from_tensor(out, [bm, bn],
                                      gl.NVMMASharedLayout.get_default_for([bm, bn], dt))
    bd = TensorDescriptor.from_tensor(b2, [bn, b2.shape[1]],
                                      gl.NVMMASharedLayout.get_default_for([bn, b2.shape[1]],
                                                                           dt))
    return od, bd


def launch_args(plan, y4, w, batch, out, t: int, bm: int, bn: int) -> tuple:
    """Positional arguments of :func:`expand_tma_kernel` from a shipped expand plan of the
    same ``BM`` and ``BN * NCOL``."""
    od, bd = descriptors(out, w.lora_b, bm, bn)
    tm = batch.tile_map
    ys = y4.stride()
    return (od, bd, y4, out, w.ranks, w.slice_bounds, batch.sorted_tokens, tm,
            t, w.num_slots, tm.shape[2], w.total_out, plan.nb, *ys, *out.stride())


def _shape(spec: str, dev: torch.device, copy: float, rows: list[dict],
           _args: object = None) -> None:
    case = expand_case(spec, dev)
    p, batch, w, y4, out, default, nbytes = case
    pristine, ref = shipped_expand_row(spec, case, dev, copy, rows)
    for bm, bn, ncol, stages, warps, tma_out, inplace in _CONFIGS:
        cfg = type(default)(bm, bn, default.block_r, warps, 1, ncol, False)
        plan = L._expand_plan(w, p.t, 1, cfg=cfg)
        cx = dict(S=plan.meta["S"], TILE=plan.meta["TILE"], SPLIT=1, NCOL=ncol, STAGES=stages,
                  ALIGN=plan.meta["ALIGN"], PDL=0, TMA_OUT=tma_out, INPLACE=inplace,
                  num_warps=warps)

        def launch(o, plan=plan, cx=cx, bm=bm, bn=bn):
            expand_tma_kernel[plan.grid](*launch_args(plan, y4, w, batch, o, p.t, bm, bn), **cx)

        what = f"{spec} tma {tma_out} ip {inplace} {bm}x{bn} ncol {ncol} st {stages} w {warps}"
        res = checked_time(launch, out, pristine, ref, dev, True, what)
        if res is None:
            continue
        err, us = res
        gbs = nbytes / (us * 1e-6) / 1e9
        rows.append(dict(kind="tma", tma_out=tma_out, inplace=inplace, op=p.op, T=p.t,
                         rank=p.rank, us=us, gbs=gbs, pct_copy=100 * gbs / copy,
                         block_m=bm, block_n=bn, col_blocks=ncol, stages=stages,
                         num_warps=warps, max_diff_vs_shipped=err, grid=plan.grid[0]))
        print(f"{what}: {us:7.1f} us {100 * gbs / copy:5.1f}%  err {err:.3g}", flush=True)


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, _SHAPES, _shape)


if __name__ == "__main__":
    raise SystemExit(main())
