"""The public split-K shrink without a zero fill: ``y[i, t, :r] = c[s, i] * x[t] @ A_i[s, :r]^T``,
zeros in every other element of ``y``, in one launch.

Grid ``(NB * tiles + cdiv(T, SW), SPLIT_K)``. The first ``NB * tiles`` columns of axis 0 are
:mod:`.shrink_kernel`'s tile programs (same tiling, same ``RLOW`` / ``RMID`` narrow paths); the
K splits of one program column order themselves on that column's ticket word,
``tick_ptr[pid]`` (an int32: arrivals in the low 16 bits, a generation above), taken as each
split starts (issued after the tile's token loads; whether its round trip overlaps theirs is
up to ptxas's schedule, not checked):

- the first to arrive stores zeros over its blocks' columns below ``R`` and publishes the
  generation in ``tick_ptr[NC + pid]`` (CTA barrier, release), then runs its K loop;
- every split adds its product with relaxed float32 atomics, the others after an acquire
  read of the flag (by then nearly always published: the zeros took one split's prologue,
  the product a whole K loop);
- the last to arrive resets the arrival count and advances the generation, so the words are
  ready for the next launch without a fill (a buffer is zeroed once, when made:
  ``launch._tickets``).

A waiter waits only on a program that has already taken its ticket (it is resident), so the
order cannot deadlock. Launches that share a ticket buffer must run one after another (the
host keeps one per stream). Split 0 of a tile program whose blocks all start past a live slot's
rank writes those blocks' zeros. The last ``cdiv(T, SW)`` columns (split 0) sweep the tokens:
every token whose slot is ``-1``, unknown (``>= L``) or empty gets a zero row in every slice,
whatever the tile map holds, so no element of ``y`` depends on what the buffer held before.

The thirty-fourth session's order (the first split to *finish* stored its product, then
published; the others waited after their K loops) replayed up to 0.6 us slower in CUDA
graphs at T <= 64 (0.4-0.6 at rank 16 with 1-4 adapters; H100,
``benchmarks/probe_shrink_ticket.py``): its waiters waited on a ticket round trip, a store and
a fence after the first K loop ended.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import fast_launch
from .shrink_kernel import _block, _blocks, _store_blocks, _zero_blocks, accumulate
from .tiles import tile_head, tile_rows

__all__ = ["shrink_ticket_kernel", "SWEEP_ROWS"]

SWEEP_ROWS = 64


@triton.jit
def _ticket(word_ptr, n):
    """Whether this program arrives first among the ``n`` K splits of its column, and the
    generation value the first one publishes."""
    old = tl.atomic_add(word_ptr, 1, sem="relaxed")
    low = old & 0xFFFF
    if low == n - 1:  # the last one: count back to zero, next generation
        tl.atomic_add(word_ptr, 0x10000 - n, sem="relaxed")
    return low == 0, (old >> 16) + 1


@triton.jit
def _publish(flag_ptr, gen):
    """The first split's zeros are stored: a CTA barrier, then a release store at GPU scope
    (:func:`.tiles.flag_arrive`'s order, storing a generation rather than counting)."""
    tl.debug_barrier()
    tl.atomic_xchg(flag_ptr, gen, sem="release")


@triton.jit
def _await(flag_ptr, gen):
    """Spin until the first split has published ``gen`` (acquire reads). Equality, not
    :func:`.tiles.flag_wait`'s ``<``: the 16-bit generation wraps."""
    v = tl.atomic_add(flag_ptr, 0, sem="acquire")
    while v != gen:
        v = tl.atomic_add(flag_ptr, 0, sem="acquire")


@triton.jit
def _open(word_ptr, nsplit, NC, sl0, c00, sl1, c01, sl2, c02, sl3, c03, m_mask, tok64, y_ptr,
          stride_ys, stride_yt, S: tl.constexpr, R: tl.constexpr, BM: tl.constexpr,
          BN: tl.constexpr, RB: tl.constexpr):
    """This K split's ticket, taken as it starts; the first to arrive zeroes the ``RB``
    blocks' columns below ``R`` and publishes. Returns (first, generation)."""
    first, gen = _ticket(word_ptr, nsplit)
    if first:
        _zero_blocks(sl0, c00, sl1, c01, sl2, c02, sl3, c03, m_mask, tok64, y_ptr, stride_ys,
                     stride_yt, S, R, BM, BN, RB)
        _publish(word_ptr + NC, gen)
    return first, gen


@triton.jit
def _sweep(j, slots_ptr, ranks_ptr, y_ptr, T, L, stride_ys, stride_yt, S: tl.constexpr,
           R: tl.constexpr, BN: tl.constexpr, SW: tl.constexpr):
    """Zero rows of ``y`` for tokens ``j * SW ...`` without a live slot."""
    offs = j * SW + tl.arange(0, SW)  # [SW]
    in_t = offs < T
    slot = tl.load(slots_ptr + offs, mask=in_t, other=-1)  # [SW]
    ok = (slot >= 0) & (slot < L)
    rank = tl.load(ranks_ptr + slot, mask=ok, other=0)  # [SW]
    dead = in_t & (rank == 0)  # [SW]
    rows = offs.to(tl.int64)[:, None] * stride_yt  # [SW, 1]
    for i in tl.static_range(S):
        for c0 in tl.static_range(0, R, BN):
            cols = c0 + tl.arange(0, BN)  # [BN]
            tl.store(y_ptr + i * stride_ys + rows + cols[None, :],
                     tl.zeros((SW, BN), dtype=tl.float32),
                     mask=dead[:, None] & (cols < R)[None, :])


@triton.jit
def _narrow_ticket(x_ptr, a_ptr, y_ptr, scal_ptr, word_ptr, slot, rank, tok64, m_mask, pid_n,
                   pid_k, nsplit, K_SPLIT, K, NC, stride_xm, stride_xk, stride_ys, stride_yt,
                   S: tl.constexpr, R: tl.constexpr, BM: tl.constexpr, W: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr,
                   PREC: tl.constexpr):
    """Slice ``pid_n``'s first ``W`` rows of a tile of a live slot whose rank is at most
    ``W`` (``BN >= R``: the first split's zeros cover the slice's columns)."""
    sl, c0, n_mask, _ = _block(pid_n, rank, S, 1, W)
    first, gen = _open(word_ptr, nsplit, NC, sl, 0, sl, 0, sl, 0, sl, 0, m_mask, tok64, y_ptr,
                       stride_ys, stride_yt, S, R, BM, BN, 1)
    acc, _, _, _ = accumulate(
        x_ptr, a_ptr, slot, rank, tok64, m_mask, sl, c0, n_mask, sl, c0, n_mask, sl, c0,
        n_mask, sl, c0, n_mask, pid_k * K_SPLIT, K_SPLIT, K, stride_xm, stride_xk, S, R, BM,
        W, BK, 1, EVEN_K, PREC)
    if not first:
        _await(word_ptr + NC, gen)
    _store_blocks(acc, acc, acc, acc, sl, c0, n_mask, sl, c0, n_mask, sl, c0, n_mask, sl, c0,
                  n_mask, m_mask, tok64, slot, 0, scal_ptr, y_ptr, 0, stride_ys, stride_yt, S,
                  R, W, 1, True, False)


@fast_launch
@triton.jit
def shrink_ticket_kernel(
    x_ptr, a_ptr, y_ptr, ranks_ptr, scal_ptr, tok_ptr, tiles_ptr, slots_ptr, tick_ptr,
    T, K, L, NT, K_SPLIT, NB, NC,
    stride_xm, stride_xk, stride_ys, stride_yt,
    S: tl.constexpr, R: tl.constexpr, RCAP: tl.constexpr, TILE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, RB: tl.constexpr,
    EVEN_K: tl.constexpr, PREC: tl.constexpr, RLOW: tl.constexpr, RMID: tl.constexpr,
    SW: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    nsplit = tl.num_programs(1)
    ntile = (T + BM - 1) // BM + tl.minimum(T, L)
    if pid >= NB * ntile:
        if pid_k == 0:
            _sweep(pid - NB * ntile, slots_ptr, ranks_ptr, y_ptr, T, L, stride_ys, stride_yt,
                   S, R, BN, SW)
        return
    pid_n = pid % NB
    pid_m = pid // NB
    slot, rank, start, end = tile_head(tiles_ptr + TILE * 3 * NT + pid_m, ranks_ptr, L, NT)
    if rank == 0:  # no slot, an unknown or an empty one: the sweep writes its zeros
        return
    m_mask, tok64 = tile_rows(start, end, tok_ptr, T, BM)  # [BM], [BM]
    word_ptr = tick_ptr + pid
    if RLOW > 0:  # RB = 1, one block a slice: program pid_n owns slice pid_n's rows
        if rank <= RLOW:
            _narrow_ticket(x_ptr, a_ptr, y_ptr, scal_ptr, word_ptr, slot, rank, tok64, m_mask,
                           pid_n, pid_k, nsplit, K_SPLIT, K, NC, stride_xm, stride_xk,
                           stride_ys, stride_yt, S, R, BM, RLOW, BN, BK, EVEN_K, PREC)
            return
        if RMID > 0:
            if rank <= RMID:
                _narrow_ticket(x_ptr, a_ptr, y_ptr, scal_ptr, word_ptr, slot, rank, tok64,
                               m_mask, pid_n, pid_k, nsplit, K_SPLIT, K, NC, stride_xm,
                               stride_xk, stride_ys, stride_yt, S, R, BM, RMID, BN, BK, EVEN_K,
                               PREC)
                return
    NBR: tl.constexpr = (RCAP + BN - 1) // BN  # blocks a slice: no slot's rank passes RCAP
    (sl0, c00, n_mask0, sl1, c01, n_mask1, sl2, c02, n_mask2, sl3, c03, n_mask3,
     live) = _blocks(pid_n, rank, S, NBR, BN, RB)
    if not live:  # every block past the rank
        if pid_k == 0:
            _zero_blocks(sl0, c00, sl1, c01, sl2, c02, sl3, c03, m_mask, tok64, y_ptr,
                         stride_ys, stride_yt, S, R, BM, BN, RB)
        return
    first, gen = _open(word_ptr, nsplit, NC, sl0, c00, sl1, c01, sl2, c02, sl3, c03, m_mask,
                       tok64, y_ptr, stride_ys, stride_yt, S, R, BM, BN, RB)
    acc0, acc1, acc2, acc3 = accumulate(
        x_ptr, a_ptr, slot, rank, tok64, m_mask, sl0, c00, n_mask0, sl1, c01, n_mask1, sl2,
        c02, n_mask2, sl3, c03, n_mask3, pid_k * K_SPLIT, K_SPLIT, K, stride_xm, stride_xk, S,
        R, BM, BN, BK, RB, EVEN_K, PREC)
    if not first:
        _await(word_ptr + NC, gen)
    _store_blocks(acc0, acc1, acc2, acc3, sl0, c00, n_mask0, sl1, c01, n_mask1, sl2, c02,
                  n_mask2, sl3, c03, n_mask3, m_mask, tok64, slot, 0, scal_ptr, y_ptr, 0,
                  stride_ys, stride_yt, S, R, BN, RB, True, False)
