"""Segmented expand for Hopper prefill with ``out`` streamed through shared memory (Gluon).

Same result as :mod:`.expand_kernel` (``out[t, off_i + n] += y[i, t, :r] @ B_i[s, n, :r]^T``,
rounded to ``out``'s dtype before the add, ``SPLIT`` partial products of ``y`` summed), same
grid and column groups (``NB`` groups of up to ``NCOL`` blocks of ``BN`` columns, fastest,
times the batch's tiles), but each program keeps a ring of ``STAGES`` ``out`` blocks, filled
by TMA ``STAGES - 2`` blocks ahead, and a ring of ``BSTAGES`` ``[BB, R]`` ``B`` boxes
(``BB``: ``BN``, or 64 under a 128-column block, two boxes a block), filled
``min((STAGES - 2) * BN / BB, BSTAGES - 1)`` boxes ahead, in shared memory. ``out`` is seen
as ``[T, N / 64, 64]`` and a block as a ``[BM, BN / 64, 64]`` box, so each of its rows is one
run of ``2 * BN`` bytes while the shared layout keeps the 128-byte swizzle (a 2-D box is at
most 128 bytes wide with it; ``benchmarks/probe_tma_rmw.py``). The wgmma takes ``y`` from
registers and ``B`` from its ring (waiting for ``B`` only); its result, reshaped to the box,
gives the layout ``out`` is read from shared memory in, and the sum goes back from the same
buffer by a TMA store.

A TMA box of ``out`` covers ``BM`` consecutive rows from the tile's first token, so it is
used where the tile's tokens are consecutive and either fill ``BM`` rows or end at ``T - 1``
(the descriptor's bounds clip the rest); any other tile (gathered decode-like tokens, a short
segment followed by another slot's rows) reads and writes its ``out`` rows with pointer
loads and stores, ``B`` still by TMA.

Host contract (checked by the launcher): Hopper (sm_90), Triton 3.6, ``out`` of the weights'
16-bit dtype with a 16-byte aligned base, unit column stride and a 16-byte multiple row
stride, every slice width a multiple of ``BN`` (64 or 128), ``R`` (``B``'s box width: the weights'
``max_rank``, or for eager calls the loaded ranks' power-of-two box) a power of two in
16..128. ``benchmarks/probe_expand_tma.py`` is the prototype and its measurements.
"""

from __future__ import annotations

import torch

from ._jit import fast_launch
from .shrink_gluon_kernel import AVAILABLE

__all__ = ["expand_gluon_kernel", "out_tile", "out_descriptor", "b_descriptor", "AVAILABLE"]

if AVAILABLE:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from .shrink_gluon_kernel import _descriptor, _layout
    from .tiles import slice_block, tile_head

    @gluon.jit
    def _issue_out(j, o_desc, o_bufs, o_ready, row, c0, STAGES: gl.constexpr):
        """TMA load of column block ``j``'s ``out`` box into ``out`` ring stage ``j % STAGES``
        (the box's second coordinate counts 64-column sub-blocks)."""
        SUB: gl.constexpr = o_desc.block_type.shape[2]
        BN: gl.constexpr = o_desc.block_type.shape[1] * SUB
        s = j % STAGES
        mbarrier.expect(o_ready.index(s), o_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(o_desc, [row, (c0 + j * BN) // SUB, 0],
                                        o_ready.index(s), o_bufs.index(s))

    @gluon.jit
    def _issue_b(j, b_desc, b_bufs, b_ready, c0, brow, BSTAGES: gl.constexpr):
        """TMA load of column block ``j``'s ``B`` rows into ``B`` ring stage ``j % BSTAGES``."""
        BN: gl.constexpr = b_desc.block_type.shape[0]
        s = j % BSTAGES
        mbarrier.expect(b_ready.index(s), b_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(b_desc, [brow + c0 + j * BN, 0], b_ready.index(s),
                                        b_bufs.index(s))

    @gluon.jit
    def _b_step(q, nq, yb, zero, b_desc, b_bufs, b_ready, c0, brow, BAHEAD: gl.constexpr,
                BSTAGES: gl.constexpr):
        """B box ``q`` of ``nq``: the load ``BAHEAD`` boxes ahead issued, then ``yb @ B^T``
        over box ``q`` once it landed (``[BM, BB]``, fp32)."""
        if q + BAHEAD < nq:
            _issue_b(q + BAHEAD, b_desc, b_bufs, b_ready, c0, brow, BSTAGES)
        sb = q % BSTAGES
        mbarrier.wait(b_ready.index(sb), (q // BSTAGES) & 1)
        acc = warpgroup_mma(yb, b_bufs.index(sb).permute((1, 0)), zero, use_acc=False)
        return warpgroup_mma_wait(num_outstanding=0, deps=[acc])

    @gluon.jit
    def _rows_add(acc, o_rows, mc, col, cols, CO: gl.constexpr, dt: gl.constexpr):
        """``out[rows, col + cols] += acc`` (rounded to ``out``'s dtype first) by pointers."""
        d = gl.convert_layout(acc.to(dt), CO)  # [BM, BB]
        o_ptrs = o_rows + (col + cols)[None, :]  # [BM, BB]
        og = gl.load(o_ptrs, mask=mc[:, None], other=0.0)  # [BM, BB]
        gl.store(o_ptrs, (og.to(gl.float32) + d.to(gl.float32)).to(dt), mask=mc[:, None])

    @fast_launch(pdl="PDL")
    @gluon.jit
    def expand_gluon_kernel(
        o_desc, b_desc, y_ptr, out_ptr, ranks_ptr, bounds_ptr, tok_ptr, tiles_ptr,
        T, L, NT, N, NB,
        stride_yp, stride_ys, stride_yt, stride_yr, stride_om,
        S: gl.constexpr, TILE: gl.constexpr, SPLIT: gl.constexpr, NCOL: gl.constexpr,
        STAGES: gl.constexpr, BSTAGES: gl.constexpr, ALIGN: gl.constexpr, PDL: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        BM: gl.constexpr = o_desc.block_type.shape[0]
        G: gl.constexpr = o_desc.block_type.shape[1]
        SUB: gl.constexpr = o_desc.block_type.shape[2]
        BN: gl.constexpr = G * SUB
        BB: gl.constexpr = b_desc.block_type.shape[0]  # columns of a B box (a wgmma's N)
        NSUB: gl.constexpr = BN // BB  # B boxes (wgmmas) an out box
        R: gl.constexpr = b_desc.block_type.shape[1]
        dt: gl.constexpr = o_desc.dtype
        ACC: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BB, 16])
        YL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=ACC, k_width=2)
        TN: gl.constexpr = BB // 8
        CO: gl.constexpr = gl.BlockedLayout([1, 8], [32 // TN, TN], [num_warps, 1], [1, 0])
        AHEAD: gl.constexpr = STAGES - 2  # an out stage is reloaded once its TMA store read it
        # B boxes ahead; a B stage is reloaded once its wgmma is done
        BAHEAD: gl.constexpr = AHEAD * NSUB if AHEAD * NSUB < BSTAGES else BSTAGES - 1

        pid = gl.program_id(0)
        pid_n = pid % NB
        pid_m = pid // NB
        slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
        sl, c0, c1 = slice_block(bounds_ptr, pid_n, S, BN * NCOL, ALIGN)
        if (rank == 0) | (end <= start):  # no slot, an empty slot or no rows
            return
        n = end - start
        first = gl.load(tok_ptr + start)
        last = gl.load(tok_ptr + end - 1)
        use_tma = (((last - first) == (n - 1)) & ((n == BM) | (last == T - 1))
                   & (first >= 0) & (last < T))
        ncol = gl.minimum((c1 - c0 + BN - 1) // BN, NCOL)
        brow = slot * N

        o_bufs = gl.allocate_shared_memory(dt, [STAGES, BM, G, SUB], o_desc.layout)
        b_bufs = gl.allocate_shared_memory(dt, [BSTAGES, BB, R], b_desc.layout)
        o_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        b_ready = gl.allocate_shared_memory(gl.int64, [BSTAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(o_ready.index(i), count=1)
        for i in gl.static_range(BSTAGES):
            mbarrier.init(b_ready.index(i), count=1)
        fence_async_shared()
        if use_tma:
            for i in gl.static_range(AHEAD):
                if i < ncol:
                    _issue_out(i, o_desc, o_bufs, o_ready, first, c0, STAGES)
        for i in gl.static_range(BAHEAD):
            if i < ncol * NSUB:
                _issue_b(i, b_desc, b_bufs, b_ready, c0, brow, BSTAGES)

        if PDL:  # launched beside the shrink that writes y (add_lora): wait for it
            gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32,
                                      is_pure=False, pack=1)
        rows_y = start + gl.arange(0, BM, layout=gl.SliceLayout(1, YL))  # [BM]
        tok_y = gl.load(tok_ptr + rows_y, mask=rows_y < end, other=T)  # [BM]
        my = (tok_y >= 0) & (tok_y < T)  # [BM]
        offs_r = gl.arange(0, R, layout=gl.SliceLayout(0, YL))  # [R]
        y_ptrs = (y_ptr + sl * stride_ys + gl.where(my, tok_y, 0).to(gl.int64)[:, None]
                  * stride_yt + offs_r[None, :] * stride_yr)  # [BM, R]
        ym = my[:, None] & (offs_r < rank)[None, :]  # [BM, R]
        yb = gl.load(y_ptrs, mask=ym, other=0.0).to(gl.float32)  # [BM, R]
        for p in gl.static_range(1, SPLIT):
            yb += gl.load(y_ptrs + p * stride_yp, mask=ym, other=0.0).to(gl.float32)
        yb = yb.to(dt)

        rows_c = start + gl.arange(0, BM, layout=gl.SliceLayout(1, CO))  # [BM]
        tok_c = gl.load(tok_ptr + rows_c, mask=rows_c < end, other=T)  # [BM]
        mc = (tok_c >= 0) & (tok_c < T)  # [BM]
        o_rows = out_ptr + gl.where(mc, tok_c, 0).to(gl.int64)[:, None] * stride_om  # [BM, 1]
        cols = gl.arange(0, BB, layout=gl.SliceLayout(0, CO))  # [BB]
        zero = gl.zeros([BM, BB], gl.float32, ACC)  # [BM, BB]

        for j in range(ncol):
            s = j % STAGES
            if j + AHEAD < ncol:
                if use_tma:
                    tma.store_wait(1)
            gl.thread_barrier()
            if j + AHEAD < ncol:
                if use_tma:
                    _issue_out(j + AHEAD, o_desc, o_bufs, o_ready, first, c0, STAGES)
            col = c0 + j * BN
            acc = _b_step(j * NSUB, ncol * NSUB, yb, zero, b_desc, b_bufs, b_ready, c0, brow,
                          BAHEAD, BSTAGES)  # [BM, BB]
            if NSUB == 2:
                gl.thread_barrier()  # every warp's wgmma of the first B box is done
                acc2 = _b_step(j * NSUB + 1, ncol * NSUB, yb, zero, b_desc, b_bufs, b_ready,
                               c0, brow, BAHEAD, BSTAGES)  # [BM, BB]
            if use_tma:
                if NSUB == 2:
                    d3 = gl.permute(gl.join(acc.to(dt), acc2.to(dt)), (0, 2, 1))  # [BM, 2, SUB]
                else:
                    d3 = gl.reshape(acc.to(dt), [BM, G, SUB])  # [BM, G, SUB]
                mbarrier.wait(o_ready.index(s), (j // STAGES) & 1)
                ob = o_bufs.index(s)
                o = ob.load(d3.type.layout)  # [BM, G, SUB]
                gl.thread_barrier()
                ob.store((o.to(gl.float32) + d3.to(gl.float32)).to(dt))
                fence_async_shared()
                gl.thread_barrier()
                tma.async_copy_shared_to_global(o_desc, [first, col // SUB, 0], ob)
            else:
                _rows_add(acc, o_rows, mc, col, cols, CO, dt)
                if NSUB == 2:
                    _rows_add(acc2, o_rows, mc, col + BB, cols, CO, dt)
        tma.store_wait(0)

    def out_tile(bm: int, bn: int, dtype) -> tuple:
        """``out``'s descriptor tile (``[bm, bn / 64, 64]``: ``bn`` columns as 64-column
        sub-blocks) and shared layout (once per plan)."""
        tile = [bm, bn // 64, 64]
        dt = gl.float16 if dtype == torch.float16 else gl.bfloat16
        return tile, gl.NVMMASharedLayout.get_default_for(tile, dt)

    def out_descriptor(out, t: int, n: int, row_stride: int, tile: tuple):
        """TMA descriptor of ``out [t, n]`` (16-bit, unit column stride, ``n`` a multiple of
        64) viewed as ``[t, n / 64, 64]`` for :func:`out_tile`: a box's rows are ``bn``
        contiguous columns, fetched as one run where the shared layout keeps the 128-byte
        swizzle."""
        return _descriptor(out, [t, n // 64, 64], [row_stride, 64, 1], *tile)

    def b_descriptor(b, bn: int, box: int | None = None):
        """TMA descriptor of a contiguous ``B [L, N, R]`` as ``[L * N, R]``, tile ``[bn, box]``
        (``box``: ``R``, or a power of two bounding every loaded rank)."""
        r = b.shape[-1]
        box = r if box is None else box
        b2 = b.view(-1, r)
        return _descriptor(b2, list(b2.shape), [r, 1], [bn, box],
                           _layout(bn, box, b.dtype == torch.float16))

else:
    expand_gluon_kernel = None
    out_tile = out_descriptor = b_descriptor = None
