"""Warp-specialized segmented shrink for Hopper prefill, written in Gluon (Triton 3.6).

Same outputs and epilogues as :mod:`.shrink_kernel` (``y[p, i, t, :r] = c[s, i] *
x[t] @ A_i[s, :r]^T``, stored, atomically added or written with zeros past the rank), but a
different work split: grid ``(tiles, SPLIT_K)``, and a program holds *every* rank row of its
slot (one ``[BR, BK]`` block per slice, ``BR >=`` its rank), so each ``x`` tile leaves L2 once.

Inside a program one producer warp issues the TMA loads of the ``[BM, BK]`` ``x`` tile and
the ``S`` ``A`` blocks into a ring of ``STAGES`` shared-memory buffers (``ready`` /
``empty`` mbarriers); the consumer warpgroup(s) run one asynchronous wgmma per slice and keep
one stage in flight. A tile whose tokens are consecutive (a prefill segment) reads ``x`` by
TMA at its first token; any other tile's consumer gathers its ``x`` rows with pointer loads
into registers (wgmma's register operand) while the producer brings ``A`` alone. Rows a
descriptor brings past the tile's end and ``A`` rows past a slot's rank (the next slice's)
only feed accumulator entries the masked store drops, so any rank ``<= BR`` is correct
(``BR``: ``R`` rounded up to a power of two, or for eager ``add_lora`` the largest loaded
rank rounded up; ``R`` stays the slot stride). Its ``A`` reads follow ``BR``, not the real
ranks: the launcher picks it where the loaded ranks fall short of ``R`` by little against
``x`` (``configs.gluon_takes_ranks``).

Host contract (checked by the launcher): Hopper (sm_90), Triton 3.6 (the Gluon API changes
between releases), 16-bit weights, ``K % BK == 0``, ``K_SPLIT % BK == 0``, ``S <= 3``,
``x`` 16-byte aligned with unit column stride and a 16-byte multiple row stride.
``benchmarks/probe_shrink_gluon.py`` is the dense prototype and its measurements.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from ._jit import fast_launch
from .tiles import tile_head

try:
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
except (ImportError, AttributeError):  # Triton < 3.5 or a release with another Gluon API
    gluon = None

__all__ = ["shrink_gluon_kernel", "gluon_descriptors", "x_descriptor", "a_descriptor",
           "x_tile", "rows_descriptor", "AVAILABLE", "PRODUCER_REGS"]

AVAILABLE = gluon is not None

if AVAILABLE:
    PRODUCER_REGS = gl.constexpr(40)  # the TMA warp's register budget (setmaxnreg)

    @gluon.jit
    def _producer(x_desc, a_desc, x_bufs, a_bufs, ready, empty, first, ar0, ar1, ar2, k0,
                  k_iters, consec, NB: gl.constexpr, STAGES: gl.constexpr,
                  GATHER: gl.constexpr):
        PERM: gl.constexpr = len(x_desc.block_type.shape) == 3
        if PERM:  # [G, BM, 64] boxes of the [K / 64, T, 64] view
            BK: gl.constexpr = x_desc.block_type.shape[0] * x_desc.block_type.shape[2]
        else:
            BK: gl.constexpr = x_desc.block_type.shape[1]
        a_bytes: gl.constexpr = NB * a_desc.block_type.nbytes
        x_bytes: gl.constexpr = x_desc.block_type.nbytes
        for i in range(k_iters):
            s = i % STAGES
            mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
            k = k0 + i * BK
            if not GATHER:
                mbarrier.expect(ready.index(s), x_bytes + a_bytes)
                _box(x_desc, first, k, ready.index(s), x_bufs.index(s), PERM)
            elif consec:
                mbarrier.expect(ready.index(s), x_bytes + a_bytes)
                _box(x_desc, first, k, ready.index(s), x_bufs.index(s), PERM)
            else:
                mbarrier.expect(ready.index(s), a_bytes)
            _box(a_desc, ar0, k, ready.index(s), a_bufs.index(s * NB), PERM)
            if NB > 1:
                _box(a_desc, ar1, k, ready.index(s), a_bufs.index(s * NB + 1), PERM)
            if NB > 2:
                _box(a_desc, ar2, k, ready.index(s), a_bufs.index(s * NB + 2), PERM)

    @gluon.jit
    def _box(desc, row, k, bar, buf, PERM: gl.constexpr):
        """One TMA box of rows ``row ...`` from column ``k``: ``[rows, BK]`` of a 2-D
        descriptor, or ``[G, rows, 64]`` of a ``[K / 64, rows, 64]`` view (``PERM``)."""
        if PERM:
            tma.async_copy_global_to_shared(desc, [k // 64, row, 0], bar, buf)
        else:
            tma.async_copy_global_to_shared(desc, [row, k], bar, buf)

    @gluon.jit
    def ring(x_desc, a_desc, NB: gl.constexpr, STAGES: gl.constexpr):
        """The shared-memory ring: ``STAGES`` ``x`` tiles, ``STAGES * NB`` ``A`` blocks and
        their ``ready`` / ``empty`` mbarriers (initialized, fenced for the async proxy).
        Boxes of ``[K / 64, rows, 64]`` views (3-D descriptors) take ``[G, rows, 64]``
        buffers."""
        if len(x_desc.block_type.shape) == 3:
            G: gl.constexpr = x_desc.block_type.shape[0]
            BM: gl.constexpr = x_desc.block_type.shape[1]
            BR: gl.constexpr = a_desc.block_type.shape[1]
            x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, G, BM, 64],
                                               x_desc.layout)
            a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES * NB, G, BR, 64],
                                               a_desc.layout)
        else:
            BM: gl.constexpr = x_desc.block_type.shape[0]
            BK: gl.constexpr = x_desc.block_type.shape[1]
            BR: gl.constexpr = a_desc.block_type.shape[0]
            x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BM, BK], x_desc.layout)
            a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES * NB, BR, BK],
                                               a_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
            mbarrier.init(empty.index(s), count=1)
        fence_async_shared()
        return x_bufs, a_bufs, ready, empty

    @gluon.jit
    def chunks(bufs):
        """``bufs`` as ``[n, rows, cols]`` tiles wgmma reads: 3-D buffers as they are,
        ``[n, G, rows, 64]`` ones (boxes of a ``[K / 64, rows, 64]`` view, each ``[rows,
        64]`` chunk swizzled on its own) as ``n * G`` tiles ``[rows, 64]``."""
        if len(bufs.type.shape) == 4:
            G: gl.constexpr = bufs.type.shape[1]
            ROWS: gl.constexpr = bufs.type.shape[2]
            return bufs._reinterpret(bufs.dtype, [bufs.type.shape[0] * G, ROWS, 64],
                                     gl.NVMMASharedLayout.get_default_for([ROWS, 64],
                                                                          bufs.dtype))
        else:
            return bufs

    @gluon.jit
    def _consume_tma(x_bufs, a_bufs, ready, empty, acc0, acc1, acc2, k_iters,
                     NB: gl.constexpr, STAGES: gl.constexpr, G: gl.constexpr):
        """wgmma on the ``x`` and ``A`` tiles of the ring (``G`` chunks a stage), one stage
        kept in flight."""
        xc = chunks(x_bufs)
        ac = chunks(a_bufs)
        for i in range(k_iters):
            s = i % STAGES
            mbarrier.wait(ready.index(s), (i // STAGES) & 1)
            for g in gl.static_range(G):
                xb = xc.index(s * G + g)
                acc0 = warpgroup_mma(xb, ac.index(s * NB * G + g).permute((1, 0)), acc0,
                                     is_async=True)
                if NB > 1:
                    acc1 = warpgroup_mma(xb, ac.index((s * NB + 1) * G + g).permute((1, 0)),
                                         acc1, is_async=True)
                if NB > 2:
                    acc2 = warpgroup_mma(xb, ac.index((s * NB + 2) * G + g).permute((1, 0)),
                                         acc2, is_async=True)
            acc0, acc1, acc2 = warpgroup_mma_wait(num_outstanding=NB * G,
                                                  deps=(acc0, acc1, acc2))
            mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), pred=i > 0)
        return warpgroup_mma_wait(num_outstanding=0, deps=(acc0, acc1, acc2))

    @gluon.jit
    def _consume_gather(x_ptr, tok_ptr, a_bufs, ready, empty, acc0, acc1, acc2, start, end,
                        T, k0, k_iters, stride_xm, stride_xk, BM: gl.constexpr,
                        NB: gl.constexpr, STAGES: gl.constexpr, G: gl.constexpr,
                        layout: gl.constexpr):
        """wgmma on ``x`` rows gathered into registers (``G`` chunks a stage) and the ``A``
        tiles of the ring."""
        ac = chunks(a_bufs)
        BK: gl.constexpr = ac.type.shape[2]
        op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=layout, k_width=2)
        rows = start + gl.arange(0, BM, layout=gl.SliceLayout(1, op))  # [BM]
        tok = gl.load(tok_ptr + rows, mask=rows < end, other=T)  # [BM]
        m_mask = (tok >= 0) & (tok < T)  # [BM]
        tok64 = gl.where(m_mask, tok, 0).to(gl.int64)  # [BM]
        offs_k = k0 + gl.arange(0, BK, layout=gl.SliceLayout(0, op))  # [BK]
        x_ptrs = (x_ptr + tok64[:, None] * stride_xm
                  + offs_k[None, :].to(gl.int64) * stride_xk)  # [BM, BK]
        for i in range(k_iters):
            s = i % STAGES
            for g in gl.static_range(G):
                xb = gl.load(x_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, BK]
                if g == 0:
                    mbarrier.wait(ready.index(s), (i // STAGES) & 1)
                acc0 = warpgroup_mma(xb, ac.index(s * NB * G + g).permute((1, 0)), acc0)
                if NB > 1:
                    acc1 = warpgroup_mma(xb, ac.index((s * NB + 1) * G + g).permute((1, 0)),
                                         acc1)
                if NB > 2:
                    acc2 = warpgroup_mma(xb, ac.index((s * NB + 2) * G + g).permute((1, 0)),
                                         acc2)
                x_ptrs += BK * stride_xk
            mbarrier.arrive(empty.index(s))
        return acc0, acc1, acc2

    @gluon.jit
    def _consumer(x_ptr, tok_ptr, x_bufs, a_bufs, ready, empty, start, end, T, k0, k_iters,
                  stride_xm, stride_xk, consec, BM: gl.constexpr, NB: gl.constexpr,
                  STAGES: gl.constexpr, layout: gl.constexpr, GATHER: gl.constexpr):
        PERM: gl.constexpr = len(a_bufs.type.shape) == 4
        if PERM:
            G: gl.constexpr = a_bufs.type.shape[1]
            BR: gl.constexpr = a_bufs.type.shape[2]
        else:
            G: gl.constexpr = 1
            BR: gl.constexpr = a_bufs.type.shape[1]
        acc0 = gl.zeros((BM, BR), dtype=gl.float32, layout=layout)  # [BM, BR]
        acc1 = gl.zeros((BM, BR), dtype=gl.float32, layout=layout)  # [BM, BR]
        acc2 = gl.zeros((BM, BR), dtype=gl.float32, layout=layout)  # [BM, BR]
        if not GATHER:
            acc0, acc1, acc2 = _consume_tma(x_bufs, a_bufs, ready, empty, acc0, acc1, acc2,
                                            k_iters, NB, STAGES, G)
        elif consec:
            acc0, acc1, acc2 = _consume_tma(x_bufs, a_bufs, ready, empty, acc0, acc1, acc2,
                                            k_iters, NB, STAGES, G)
        else:
            acc0, acc1, acc2 = _consume_gather(x_ptr, tok_ptr, a_bufs, ready, empty, acc0,
                                               acc1, acc2, start, end, T, k0, k_iters,
                                               stride_xm, stride_xk, BM, NB, STAGES, G,
                                               layout)
        return acc0, acc1, acc2

    @gluon.jit
    def _rows(tok_ptr, start, end, T, BM: gl.constexpr, layout: gl.constexpr):
        """Row mask ``[BM]`` and int64 token ids ``[BM]`` of rows ``start ... end`` of
        ``sorted_tokens`` (ids outside ``[0, T)`` masked and read as 0)."""
        rows = start + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))  # [BM]
        tok = gl.load(tok_ptr + rows, mask=rows < end, other=T)  # [BM]
        m_mask = (tok >= 0) & (tok < T)  # [BM]
        return m_mask, gl.where(m_mask, tok, 0).to(gl.int64)

    @gluon.jit
    def _store(acc, sl, rank, slot, m_mask, tok64, pid_k, scal_ptr, y_ptr, stride_yp,
               stride_ys, stride_yt, S: gl.constexpr, R: gl.constexpr, BR: gl.constexpr,
               ATOMIC: gl.constexpr, FILL: gl.constexpr, layout: gl.constexpr):
        scale = gl.load(scal_ptr + slot * S + sl)
        cols = gl.arange(0, BR, layout=gl.SliceLayout(0, layout))  # [BR]
        y_ptrs = (y_ptr + pid_k.to(gl.int64) * stride_yp + sl * stride_ys
                  + tok64[:, None] * stride_yt + cols[None, :])  # [BM, BR]
        full = m_mask[:, None] & (cols < R)[None, :]  # [BM, BR]
        if FILL:  # every column below R, zeros past the rank
            gl.store(y_ptrs, gl.where((cols < rank)[None, :], acc * scale, 0.0), mask=full)
        elif (rank == R) | (rank == BR):  # a mask constant along the row: vector stores
            if ATOMIC:
                gl.atomic_add(y_ptrs, acc * scale, mask=full, sem="relaxed")
            else:
                gl.store(y_ptrs, acc * scale, mask=full)
        else:
            live = m_mask[:, None] & (cols < rank)[None, :]  # [BM, BR]
            if ATOMIC:
                gl.atomic_add(y_ptrs, acc * scale, mask=live, sem="relaxed")
            else:
                gl.store(y_ptrs, acc * scale, mask=live)

    @gluon.jit
    def epilogue(acc0, acc1, acc2, rank, slot, start, end, T, pid_k, tok_ptr, scal_ptr, y_ptr,
                 stride_yp, stride_ys, stride_yt, S: gl.constexpr, R: gl.constexpr,
                 BM: gl.constexpr, BR: gl.constexpr, ATOMIC: gl.constexpr,
                 FILL: gl.constexpr, PDL: gl.constexpr, layout: gl.constexpr):
        """Each slice's ``[BM, BR]`` product, scaled, into ``y`` (stored, added or with zeros
        past the rank), then with ``PDL`` the dependent launch's trigger."""
        m_mask, tok64 = _rows(tok_ptr, start, end, T, BM, layout)
        _store(acc0, 0, rank, slot, m_mask, tok64, pid_k, scal_ptr, y_ptr, stride_yp,
               stride_ys, stride_yt, S, R, BR, ATOMIC, FILL, layout)
        if S > 1:
            _store(acc1, 1, rank, slot, m_mask, tok64, pid_k, scal_ptr, y_ptr, stride_yp,
                   stride_ys, stride_yt, S, R, BR, ATOMIC, FILL, layout)
        if S > 2:
            _store(acc2, 2, rank, slot, m_mask, tok64, pid_k, scal_ptr, y_ptr, stride_yp,
                   stride_ys, stride_yt, S, R, BR, ATOMIC, FILL, layout)
        if PDL:  # the expand after it may start once every program got here or ended
            gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [],
                                      dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _zero(sl, m_mask, tok64, y_ptr, stride_ys, stride_yt, R: gl.constexpr,
              BM: gl.constexpr, BR: gl.constexpr, layout: gl.constexpr):
        cols = gl.arange(0, BR, layout=gl.SliceLayout(0, layout))  # [BR]
        y_ptrs = y_ptr + sl * stride_ys + tok64[:, None] * stride_yt + cols[None, :]
        gl.store(y_ptrs, gl.zeros((BM, BR), dtype=gl.float32, layout=layout),
                 mask=m_mask[:, None] & (cols < R)[None, :])

    @fast_launch
    @gluon.jit
    def shrink_gluon_kernel(
        x_desc, a_desc, x_ptr, y_ptr, ranks_ptr, scal_ptr, tok_ptr, tiles_ptr,
        T, K, L, NT, K_SPLIT,
        stride_xm, stride_xk, stride_yp, stride_ys, stride_yt,
        S: gl.constexpr, R: gl.constexpr, TILE: gl.constexpr, STAGES: gl.constexpr,
        ATOMIC: gl.constexpr, FILL: gl.constexpr, GATHER: gl.constexpr, PDL: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        if len(x_desc.block_type.shape) == 3:  # [G, BM, 64] boxes of a [K / 64, T, 64] view
            BM: gl.constexpr = x_desc.block_type.shape[1]
            BK: gl.constexpr = x_desc.block_type.shape[0] * 64
            BR: gl.constexpr = a_desc.block_type.shape[1]
        else:
            BM: gl.constexpr = x_desc.block_type.shape[0]
            BK: gl.constexpr = x_desc.block_type.shape[1]
            BR: gl.constexpr = a_desc.block_type.shape[0]
        layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BR, 16])
        pid_m = gl.program_id(0)
        pid_k = gl.program_id(1)
        slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
        if (rank == 0) | (end <= start):  # no slot, an empty slot or no rows
            if FILL:
                m_mask, tok64 = _rows(tok_ptr, start, end, T, BM, layout)
                for sl in gl.static_range(S):
                    _zero(sl, m_mask, tok64, y_ptr, stride_ys, stride_yt, R, BM, BR, layout)
            return
        first = gl.load(tok_ptr + start)
        last = gl.load(tok_ptr + end - 1)
        consec = (last - first) == (end - start - 1)
        base = slot * (S * R)
        k0 = pid_k * K_SPLIT
        k_iters = (gl.minimum(k0 + K_SPLIT, K) - k0) // BK

        x_bufs, a_bufs, ready, empty = ring(x_desc, a_desc, S, STAGES)
        acc0, acc1, acc2 = gl.warp_specialize(
            [(_consumer, (x_ptr, tok_ptr, x_bufs, a_bufs, ready, empty, start, end, T, k0,
                          k_iters, stride_xm, stride_xk, consec, BM, S, STAGES, layout,
                          GATHER)),
             (_producer, (x_desc, a_desc, x_bufs, a_bufs, ready, empty, first, base,
                          base + rank, base + 2 * rank, k0, k_iters, consec, S, STAGES,
                          GATHER))],
            [1], [PRODUCER_REGS])
        epilogue(acc0, acc1, acc2, rank, slot, start, end, T, pid_k, tok_ptr, scal_ptr, y_ptr,
                 stride_yp, stride_ys, stride_yt, S, R, BM, BR, ATOMIC, FILL, PDL, layout)

    @functools.lru_cache(maxsize=64)
    def _layout(rows: int, cols: int, fp16: bool):
        dt = gl.float16 if fp16 else gl.bfloat16
        return gl.NVMMASharedLayout.get_default_for([rows, cols], dt)

    _FIELDS = ("base", "shape", "strides", "block_shape", "layout", "padding")
    _new = object.__new__

    if tuple(f.name for f in dataclasses.fields(TensorDescriptor)) == _FIELDS:

        def _descriptor(base, shape: list, strides: list, block: list, layout):
            # the fields without __post_init__'s checks (~2 us): callers hold tensors that
            # meet the TMA contract (launch._tma_ready, contiguous A)
            d = _new(TensorDescriptor)
            d.__dict__ = {"base": base, "shape": shape, "strides": strides,
                          "block_shape": block, "layout": layout, "padding": "zero"}
            return d
    else:  # pragma: no cover - another release's descriptor: its own constructor
        def _descriptor(base, shape: list, strides: list, block: list, layout):
            return TensorDescriptor(base, shape, strides, block, layout)

    @functools.lru_cache(maxsize=1)
    def _perm_layout():
        # [G, rows, 64] boxes: each [rows, 64] chunk is an ordinary 128-byte-swizzled tile
        return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)

    def x_tile(bm: int, bk: int, dtype: torch.dtype, chunks: int = 1) -> tuple:
        """``x``'s tile and shared layout for :func:`rows_descriptor` (once per plan):
        ``[bm, bk]`` boxes, or with ``chunks > 1`` ``[chunks, bm, 64]`` boxes of the
        ``[K / 64, T, 64]`` view (``bk`` then 64)."""
        if chunks > 1:
            return [chunks, bm, 64], _perm_layout()
        return [bm, bk], _layout(bm, bk, dtype == torch.float16)

    def rows_descriptor(x, t: int, k: int, row_stride: int, tile: tuple):
        """TMA descriptor of ``x [t, k]`` (16-bit, 16-byte aligned base and row stride,
        unit column stride) with ``row_stride`` and :func:`x_tile`'s tile: ``[t, k]``, or
        for 3-D tiles the ``[k / 64, t, 64]`` view (strides ``64, row_stride, 1``)."""
        if len(tile[0]) == 3:
            return _descriptor(x, [k // 64, t, 64], [64, row_stride, 1], *tile)
        return _descriptor(x, [t, k], [row_stride, 1], *tile)

    def x_descriptor(x, bm: int, bk: int, chunks: int = 1):
        """:func:`rows_descriptor` of ``x [T, K]`` for tiles ``[bm, bk]`` (or ``chunks``
        of ``[bm, 64]``)."""
        return rows_descriptor(x, x.shape[0], x.shape[1], x.stride(0),
                               x_tile(bm, bk, x.dtype, chunks))

    def a_descriptor(a, br: int, bk: int, chunks: int = 1):
        """TMA descriptor of a contiguous ``a [rows, K]`` (16-bit), tile ``[br, bk]``, or
        with ``chunks > 1`` ``[chunks, br, 64]`` boxes of its ``[K / 64, rows, 64]`` view."""
        rows, k = a.shape
        if chunks > 1:
            return _descriptor(a, [k // 64, rows, 64], [64, k, 1], [chunks, br, 64],
                               _perm_layout())
        return _descriptor(a, [rows, k], [k, 1], [br, bk],
                           _layout(br, bk, a.dtype == torch.float16))

    def gluon_descriptors(x, a, bm: int, bk: int, br: int, chunks: int = 1) -> tuple:
        """TMA descriptors of ``x [T, K]`` (tile ``[bm, bk]``) and ``a [rows, K]`` (tile
        ``[br, bk]``, 16-bit) in the shared layouts the kernel's wgmma reads; ``chunks > 1``:
        ``[chunks, rows, 64]`` boxes of both operands' ``[K / 64, rows, 64]`` views."""
        return x_descriptor(x, bm, bk, chunks), a_descriptor(a, br, bk, chunks)

else:
    PRODUCER_REGS = 40
    shrink_gluon_kernel = None
    gluon_descriptors = x_descriptor = a_descriptor = x_tile = rows_descriptor = None
