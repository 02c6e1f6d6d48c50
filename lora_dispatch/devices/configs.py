"""Per-device kernel configurations for the Triton backend.

Configs are keyed on :attr:`DeviceInfo.family` (``h100``, ``h200``, ``a100``, ``mi300``, ...)
and on the problem size: the token-count bucket ``T``, the reduction width ``K`` (shrink) or
output width ``N`` (expand), the padded shrink width ``S * max_rank`` and the dtype.

H100 / H200 were measured with :mod:`lora_dispatch.bench.kernels`; A100 and MI300 use the
same schedules with their own occupancy (compute units, 64-wide wavefronts on CDNA); any
other device gets a heuristic from its compute-unit count.

The lookups are pure functions of hashable arguments and are memoized; the Triton backend
caches the resulting launch plans per shape, so nothing here runs on the hot path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .info import DeviceInfo

__all__ = [
    "ShrinkConfig",
    "ExpandConfig",
    "FusedConfig",
    "shrink_config",
    "expand_config",
    "fused_config",
    "fused_max_tokens",
    "gluon_graph_only",
    "next_pow2",
    "shrink_tma",
    "tma_mode",
    "ENV_TMA",
    "ENV_PDL",
    "pdl",
    "GluonShrinkConfig",
    "shrink_gluon",
    "gluon_mode",
    "ENV_GLUON",
    "GluonExpandConfig",
    "expand_gluon",
    "gluon_expand_mode",
    "ENV_GLUON_EXPAND",
    "gluon_takes_ranks",
    "shrink_ticket",
    "ticket_mode",
    "ENV_TICKET",
]

ENV_TMA = "LORA_DISPATCH_TMA"
ENV_PDL = "LORA_DISPATCH_PDL"
ENV_GLUON = "LORA_DISPATCH_GLUON"
ENV_GLUON_EXPAND = "LORA_DISPATCH_GLUON_EXPAND"
ENV_TICKET = "LORA_DISPATCH_SHRINK_TICKET"


@dataclass(frozen=True)
class ShrinkConfig:
    """Segmented ``x @ A^T``: tokens per tile, rank columns, K step, K splits, launch knobs.

    ``rank_blocks`` blocks of ``block_n`` rank rows share each loaded ``x`` tile in one
    program (``block_n * rank_blocks`` rows per program). ``low_rank`` (0: off): a tile
    whose slot's rank is at most this takes ``low_rank``-row blocks instead (a second code
    path in the same kernel, chosen on the device; see :data:`LOW_RANK`); ``mid_rank`` (0:
    off) a third, for ranks up to it.
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int
    rank_blocks: int = 1
    low_rank: int = 0
    mid_rank: int = 0


@dataclass(frozen=True)
class ExpandConfig:
    """Segmented ``y @ B^T`` added into the output: tokens, columns, rank step, launch knobs.

    ``prefetch``: load each ``out`` block one step ahead into registers (the first one before
    ``y`` is waited on). ``low_rank`` (0: off): a tile whose slot's rank is at most this
    takes a one-step ``low_rank``-wide rank block instead (see :data:`LOW_RANK`); ``mid_rank``
    (0: off) the same for ranks up to it. ``y_early``: a one-step tile reads ``y`` before its
    slot's rank is known and zeroes the columns past it afterwards (see ``_y_early``).
    """

    block_m: int
    block_n: int
    block_r: int
    num_warps: int
    num_stages: int
    col_blocks: int = 1
    prefetch: bool = False
    low_rank: int = 0
    mid_rank: int = 0
    y_early: bool = False


@dataclass(frozen=True)
class OverlapConfig:
    """``add_lora`` in one launch whose expand programs run beside the shrink's (per-tile
    flags): the shrink and expand tilings (one ``block_m``, one K split), how many token
    tiles the shrink runs ahead (``lag``), and the launch knobs the two roles share."""

    shrink: ShrinkConfig
    expand: ExpandConfig
    lag: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        if self.shrink.block_m != self.expand.block_m:
            raise ValueError("OverlapConfig: shrink and expand need one block_m, got "
                             f"{self.shrink.block_m} and {self.expand.block_m}")
        if self.lag < 1:
            raise ValueError(f"OverlapConfig: lag must be >= 1, got {self.lag}")


@dataclass(frozen=True)
class FusedConfig:
    """Single-launch shrink + expand for small batches (each program recomputes its ``y``)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def next_pow2(n: int) -> int:
    """Smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


_MEASURED = frozenset({"h100", "h200"})


def _units(info: DeviceInfo) -> int:
    return max(info.compute_units, 1)


# shared memory (bytes) one compute unit gives its resident programs
_SMEM_PER_UNIT: dict[str, int] = {"h100": 228 << 10, "h200": 228 << 10, "a100": 164 << 10,
                                  "mi300": 64 << 10}


def _smem_per_unit(family: str) -> int:
    return _SMEM_PER_UNIT.get(family, 100 << 10)


def _warps(warp: int, warps: int) -> int:
    """Warps per program; CDNA wavefronts are 64 wide, so halve (at least 1)."""
    if warp >= 64:
        return max(1, warps // 2)
    return warps


def _stages(platform: str, family: str, stages: int) -> int:
    """Software-pipelining depth (ROCm's stream-pipeliner wants 2; Ampere at most 4)."""
    if platform == "rocm":
        return 2 if stages > 1 else 1
    if family == "a100" or family.startswith("sm_8"):
        return min(stages, 4)
    return stages


# decode tiles of slots whose rank is at most this take a second, narrower code path of the
# shrink and the expand (T <= 256; add_lora's expand below rank loops T <= 64) where the
# plan's rank box (max_rank, or the eager cap) is wider: a CUDA graph runs the plan for
# max_rank whatever ranks it replays over, so rank-16 adapters in a rank-64 pool paid for
# 64-row shrink blocks and a 64-wide rank step. H200, qkv add_lora, graph replay, 4 / 16
# adapters (probe_mixed_decode.py, mixed-decode-rlow-...json): rank 16 in a rank-64 pool
# T=1 5.78 / 5.76 -> 4.25 / 4.42 us, T=16 7.00 / 10.88 -> 5.06 / 7.24, T=64 8.59 / 12.15 ->
# 6.16 / 8.24 (the plan capped at 16: 4.37 / 4.41, 5.18 / 8.08, 5.89 / 8.28); in a rank-128
# pool T=16 11.75 / 28.93 -> 6.12 / 14.78, T=256 20.12 / 24.49 -> 10.87 / 13.76; uniform rank
# 64 and 128 within 0.25 us and 0.7 us. add_lora's expand (over partials) at T=256 below
# rank loops cost rank-64 tiles 1.1-1.3 us there (12.2 -> 13.4 us, 4 adapters;
# mixed-decode-rlow-t256-...json); the public expand at T=256 gained even on uniform rank 64
# (4.94 / 7.54 -> 4.69 / 6.86 us, 1 / 16 adapters; rank 16 in a rank-64 pool 4.67 / 6.91 ->
# 3.68 / 5.20; mixed-expand-t256-...json) and lost at most 0.07 us below (mixed-expand-...json).
# A second path for ranks 17-32 where the box is wider still (MID_RANK; mixed-decode-mid-...json,
# 4 / 16 adapters): rank 32 in a rank-64 pool T=16 6.91 / 11.05 -> 5.48 / 8.06 us, T=64 8.58
# / 12.25 -> 6.62 / 9.26 (capped at 32: 5.70 / 9.79, 6.96 / 9.48); in a rank-128 pool T=16
# 25.9 -> 11.9 (16 adapters); uniform rank 64 and 128 within 0.1 us but the public expand at
# T=256 (5.36 -> 5.54, 4 adapters)
LOW_RANK = 16
MID_RANK = 2 * LOW_RANK


def _low_ranks(kind: str, tb: int, box: int, partials: int = 1) -> tuple[int, int]:
    """The narrower paths' rank bounds ``(low_rank, mid_rank)`` for a decode ``kind`` plan
    whose rank box is ``box`` (an expand summing ``partials`` split-K products)."""
    top = 64 if kind == "expand" and partials > 1 and box <= 64 else 256
    if tb > top or box <= LOW_RANK:
        return 0, 0
    return LOW_RANK, MID_RANK if box > MID_RANK else 0


def _token_bucket(t: int) -> int:
    for b in (1, 16, 64, 256, 1024):
        if t <= b:
            return b
    return 4096


# prefill workspace shrink with several 64-row rank blocks per token tile (qkv rank 33-64):
# of (64-token tiles, one split), (64, two splits), (128, two splits) the grid whose last
# wave is fullest at the programs a unit that shared memory leaves (64 KB / 96 KB a program
# at BK 64 and 4 stages: 3 / 2 on H100 / H200); earlier on ties. H200 add_lora qkv r64
# (probe_add_lora_shrink.py, shrink-mid-...json): T=5120 (64, 2 splits: 480 programs, 1.2
# waves) 70.2 us vs 62.3 for (128, 2 splits: 240, 0.91 waves); (64, 1 split) stays fastest
# at T=6144 and 8192, (64, 2 splits) at T=3072 and 4096
_WAVE_FIT_FAMILIES = ("h100", "h200")


def _fullest_last_wave(cands: tuple, grid: Callable[[Any], tuple[int, int]]) -> Any:
    """The candidate whose grid's last wave is fullest, earlier on ties; ``grid(c)`` gives
    ``(programs, programs a wave)``."""
    best, best_fill = cands[0], -1.0
    for c in cands:
        programs, slots = grid(c)
        fill = programs / (slots * -(-programs // slots))
        if fill > best_fill + 1e-9:
            best, best_fill = c, fill
    return best


def _fit_wave(units: int, smem: int, t: int, pairs: int, stages: int, block_n: int,
              row_bytes: int) -> tuple[int, int]:
    """``(block_m, split)`` of the shrink grid whose last wave is fullest (see above);
    ``row_bytes``: one row of a K step."""
    return _fullest_last_wave(((64, 1), (64, 2), (128, 2)), lambda c: (
        -(-t // c[0]) * pairs * c[1],
        units * max(1, smem // (stages * (c[0] + block_n) * row_bytes))))


@functools.lru_cache(maxsize=4096)
def _shrink_config(family: str, platform: str, units: int, warp: int, tb: int, k: int,
                   rank: int, slices: int, t: int, itemsize: int, atomic: bool) -> ShrinkConfig:
    # blocks never straddle slices: BN rows of one slice, RB (slice, block) pairs a program
    block_n = max(16, min(next_pow2(rank), 64 if tb >= 1024 else 128))
    pairs = slices * (-(-rank // block_n))
    if tb <= 256:
        # one block per program: more, shorter programs beat sharing x (H200 add_lora shrink,
        # qkv rank 16, T=64: 7.9 us vs 8.9 with 3 blocks; rank 64, T=1: 7.5 vs 8.6)
        block_m, block_k, warps, stages, rank_blocks = 16, 128, 4, 4, 1
        if atomic and 1 < tb <= 64:
            # public shrink, 3 stages: 16 busy tiles (16 adapters) replayed 0.2 us faster,
            # 1 and 4 adapters the same (H200, rank 16, T=16 / 64, fill + kernel:
            # 4.61 / 4.53 -> 4.42 / 4.32 us; probe_shrink_decode.py --configs,
            # shrink-decode-cfg-...json)
            stages = 3
    elif block_n >= 64 or t <= 2048:
        # H200, qkv, T=2048: one block per program and two K splits fill the device (rank 16:
        # 13.4 us vs 14.8 with 3 blocks; rank 64: 16.9 vs 19.8 unsplit)
        block_m, block_k, warps, stages, rank_blocks = 64, 128, 4, 4, 1
    else:
        # qkv rank 16, T=8192: 3 blocks of 16 share each x tile, 24.1 us vs 25.6; up to 96
        # rows, so ranks 17-32 (BN 32) take all 3 qkv blocks instead of 2 + 1 (H200 add_lora
        # qkv, alternating rounds: rank 32 T=8192 96.2 -> 83.7 us, 4096 47.0 -> 44.8, 3072
        # 42.2 -> 39.9; rank 24 T=8192 107.3 -> 94.3; add-lora-shrink-ab-...json)
        block_m, block_k, warps, stages = 64, 128, 4, 4
        rank_blocks = max(1, min(4, pairs, 96 // block_n))
    if pairs > rank_blocks and t > 2048:
        # several programs per tile re-stream x from L2; a shorter K step keeps more of them
        # in flight (H200, qkv rank 64: BK=64 beat BK=128 at T = 3072-8192 in every sweep)
        block_k = 64
    if itemsize == 4:
        block_k = min(block_k, 64)
    block_k = min(block_k, max(16, next_pow2(k)))
    programs = (-(-t // block_m)) * (-(-pairs // rank_blocks))
    split = 1
    target = 4 * units if tb <= 256 else 2 * units if t <= 2048 and not atomic else units
    while programs * split * 2 <= target and k // (split * 2) >= 2 * block_k:
        split *= 2
    if not atomic:  # the expand re-reads every partial product per column block
        if tb <= 256:
            # about two programs per compute unit, fewer splits for wide ranks (H200
            # add_lora qkv graph replay: rank 64, T=64: 12.6 us with 4 splits vs 16.2 with
            # 8; rank 16, T=256: 10.9 vs 12.5; T=1 keeps 8: 6.9 / 8.3 us); up to T=16 8
            # since the expand reads the partials in two column blocks a program (rank 64
            # T=16, 1 / 16 adapters: 7.9 / 12.4 us with 4 splits, 7.0 / 12.1 with 8)
            while split > 1 and programs * split > 2 * units:
                split //= 2
            split = min(split, 8 if t <= 16 or rank * min(t, 16) <= 256 else 4)
            if rank > 64 and t > 64:
                # the expand loops over 64-rank steps here, re-reading every partial per step
                # (H200 add_lora qkv rank 128, graph replay, 1 / 4 / 16 adapters, with the
                # expand below: T=256 28.3 / 27.8 / 45.2 -> 23.0 / 23.0 / 34.2 us, T=128
                # 17.0 / 17.3 / 42.0 -> 17.8 / 17.7 / 29.0; probe_add_lora_decode.py)
                split = min(split, 2)
        elif t <= 2048:
            split = min(split, 2)
        else:
            # two partial products while one split leaves the device under two programs
            # per unit (H200 qkv sweep, sweep_shrink --mid: rank 16 T = 3072 / 4096 / 6144:
            # 21.6 / 21.7 / 22.2 us -> 15.0 / 16.0 / 21.0; rank 64 T = 3072 / 4096 with
            # BK 64: 34.4 / 25.7 -> 19.8 / 21.4; rank 64 T >= 6144 keeps one split)
            split = 2 if programs < 2 * units and k // 2 >= 2 * block_k else 1
    stages = _stages(platform, family, stages)
    if (not atomic and t > 2048 and family in _WAVE_FIT_FAMILIES and 32 < rank <= 64
            and rank_blocks == 1 and pairs > 1 and block_k == 64 and k // 2 >= 2 * block_k):
        block_m, split = _fit_wave(units, _smem_per_unit(family), t, pairs, stages, block_n,
                                   block_k * itemsize)
    if tb > 256 and pairs > rank_blocks and block_k > 64 and split > 1:
        # the same below T=2048 for split K once the grid overflows one wave at the programs
        # per unit that a 128-wide K step's buffers leave (H200 add_lora qkv, alternating
        # rounds, probe_add_lora_shrink.py, add-lora-shrink-ab-...json: rank 64 T=2048 39.3
        # -> 33.6 us, T=1536 36.4 -> 32.2, rank 128 T=1024 56.7 -> 52.0; T=1280, 120
        # programs in one wave, keeps 128: 26.4 vs 27.9; rank 16 fits two programs a unit:
        # T=2048 25.7 vs 29.1; one split lost: rank 128 T=2048 120.6 -> 137.1)
        smem = stages * (block_m + block_n * rank_blocks) * block_k * itemsize
        per_unit = max(1, _smem_per_unit(family) // smem)
        if -(-t // block_m) * (-(-pairs // rank_blocks)) * split > units * per_unit:
            block_k = 64
    return ShrinkConfig(block_m, block_n, block_k, split, _warps(warp, warps), stages,
                        rank_blocks, *(_low_ranks("shrink", tb, rank) if rank_blocks == 1
                                       else (0, 0)))


def shrink_config(info: DeviceInfo, t: int, k: int, rank: int, itemsize: int,
                  atomic: bool = True, slices: int = 1) -> ShrinkConfig:
    """Config for a shrink of ``t`` tokens, width ``k``, ``slices`` slices of ``rank`` rows.

    ``split_k`` grows until the grid fills about two waves of the device. ``atomic``: the
    splits accumulate with atomics into a zeroed output (public shrink); otherwise each
    split writes its own partial product that the expand sums, so prefill avoids splitting.
    """
    return _shrink_config(info.family, info.platform, _units(info), info.warp_size,
                          _token_bucket(t), k, rank, slices, t, itemsize, atomic)


# decode expands that sum a split-K shrink's partial products (add_lora): every program of a
# tile re-reads all of them, so two column blocks a program halve those reads. H200, qkv,
# CUDA graphs, 1 / 16 adapters (probe_add_lora_decode.py, add-decode-probe-...json), shipped
# -> (BM x BN x blocks): rank 16 T=16 5.62 / 11.59 -> 4.65 / 7.69 us (16x64x2, prefetched),
# T=64 6.33 / 12.10 -> 5.17 / 7.88, T=256 8.56 / 9.94 -> 7.85 / 8.60; rank 64 T=16 8.30 /
# 17.50 -> 7.00 / 12.08 (16x64x2, 2 stages, with 8 splits), T=64 11.33 / 18.78 -> 8.52 /
# 13.11 (16x128x2), T=256 14.04 / 19.97 -> 12.30 / 15.18 (32x128x2)
def _partials_expand(tb: int, block_r: int) -> tuple[int, int, int, int, bool]:
    """``(block_m, block_n, col_blocks, stages, prefetch)`` of a decode expand over split-K
    partial products (see above)."""
    if block_r <= 32:
        return 16, 64, 2, 1, True
    if tb <= 16:
        return 16, 64, 2, 2, False
    return (16 if tb <= 64 else 32), 128, 2, 1, False


@functools.lru_cache(maxsize=4096)
def _expand_config(family: str, platform: str, units: int, warp: int, tb: int, n: int,
                   max_rank: int, itemsize: int, partials: int = 1) -> ExpandConfig:
    # one rank step up to 128 above T=256: a rank loop re-reads y (and its split partial
    # products) per column block (H200 add_lora qkv rank 128, probe_expand_rank.py: expand
    # T=8192 332 -> 77 us, add_lora 407 -> 151; T=2048 90 -> 23, add_lora 120 -> 53; on
    # sm_90 the T <= 1024 variant goes from 255 registers and a spill to 132). Decode keeps
    # 64: at T=256 the wider expand replayed faster (9.5 -> 8.7 us) but add_lora, whose
    # expand starts beside the shrink, slower (28.4 -> 35.1 us)
    block_r = max(16, min(next_pow2(max_rank), 64 if tb <= 256 else 128))
    # prefetch: each out block loaded one step ahead into registers (the first before y is
    # waited on); off where its registers cost more than it hid, e.g. beside a rank-64 y
    # tile in one block (H200 A/B, ab_trees.py: add_lora r64 T=256 16.4 -> 17.3 us graph)
    # and beside the pipeliner's buffers over several blocks (sixth session: qkv r64 T=2048,
    # 3 stages x 4 blocks, 22.1 -> 26.0 us; the 2-stage T <= 1024 config follows it unmeasured)
    if tb <= 64:
        block_m, block_n, warps, stages, ncol = 16, 64, 4, 1, 1
        prefetch = block_r <= 32  # expand T=16 2.40 -> 2.35 us graph, gate_up T=64 6.30 -> 5.86
        if tb <= 16 and n >= 16384:
            # H200 gate_up, T=16 graph replay, sweep_expand.py --decode: rank 16 3.46 us with
            # 256 columns in 2 stages vs 3.71 with 128 (3.85 prefetched); rank 64 8.08 with two
            # 64-column blocks vs 8.79 with one (128 columns: 7.83, but it spills 8 bytes)
            if block_r <= 32:
                block_n, stages, prefetch = 256, 2, False
            else:
                ncol = 2
        elif tb > 1 and max_rank <= block_r and (n >= 16384 or block_r <= 32):
            # wider blocks: fewer programs for a batch over many adapters (one tile a slot).
            # H200 public expand, T=16 / 64, 1 / 4 / 16 adapters (probe_add_lora_decode.py
            # --op, expand1-...json), 64 -> 128 columns (256 for gate_up): qkv rank 16 T=64
            # 2.59 / 2.65 / 4.10 -> 2.60 / 2.62 / 3.37 us, gate_up rank 16 T=64 4.39 / 4.73 /
            # 11.36 -> 3.82 / 4.05 / 6.93, rank 64 T=64 8.44 / 8.55 / 23.10 -> 6.03 / 6.09 /
            # 20.02. T=1 keeps 64 (2.12 vs 2.29 on qkv); ranks 33-64 below gate_up widths
            # keep 64: 128 columns were faster there too (qkv rank 64 T=16 2.66 / 3.05 / 5.80
            # -> 2.73 / 3.14 / 4.83) but spill 8 bytes on sm_90 at 4 warps (8 warps do not,
            # unmeasured); rank loops (rank > 64) unmeasured
            block_n = 256 if n >= 16384 else 128
            prefetch = prefetch and block_n == 128
    elif tb <= 256:
        block_m, block_n, warps, stages, ncol = 32, 128, 4, 1, 1
        prefetch = block_r <= 32
        if block_r <= 32:
            # 16 x 256 (same probe, T=256, 1 / 4 / 16 adapters): qkv 3.48 / 3.64 / 4.52 ->
            # 3.52 / 3.57 / 3.73 us, gate_up 8.18 / 8.35 / 11.45 -> 8.32 / 8.47 / 8.64,
            # expand 2.98 / 3.09 / 3.46 -> 2.94 / 3.03 / 3.14; rank 64 keeps 32 x 128 (expand
            # 3.74 vs 4.20 with one adapter)
            block_m, block_n, prefetch = 16, 256, False
    elif tb <= 1024:
        block_m, block_n, warps, stages, ncol, prefetch = 32, 128, 4, 2, 2, False
    elif max_rank <= 32:
        # T > 1024, H200 grid over BN x column blocks x stages x prefetch (sweep_expand.py
        # --grid, expand-grid-...json): within 2.8% of each shape's best on expand, qkv and
        # gate_up rank 16 at T = 2048-8192 (e.g. qkv T=4096 29.5 us vs 35.1 for 8 prefetched
        # blocks, qkv T=8192 55.2 vs 58.5)
        block_m, block_n, warps, stages, ncol, prefetch = 32, 128, 4, 3, 4, False
    else:
        # ranks above 32: 64-row tiles amortize each tile's B block over more rows, 64
        # columns keep the registers for the prefetch; within 3.6% of each shape's best on
        # expand, qkv and gate_up rank 64 at T = 2048-8192 (expand T=8192 42.8 us vs 51.9
        # for 64 x 128 in 4 blocks, qkv 64.6 vs 71.8, gate_up 276.5 vs 304.3, qkv T=2048
        # 19.6 vs 23.6)
        block_m, block_n, warps, stages, ncol, prefetch = 64, 64, 4, 3, 8, True
    if partials > 1 and tb <= 256 and not (tb <= 16 and n >= 16384):
        if max_rank <= block_r:
            block_m, block_n, ncol, stages, prefetch = _partials_expand(tb, block_r)
        elif tb > 64:
            # rank loops over partials at T = 65-256: 16 x 128 (the 32 x 128 tile spilled 88
            # bytes on sm_90 at 255 registers; 166, none, here), with two splits (see
            # _shrink_config)
            block_m, block_n, ncol, stages, prefetch = 16, 128, 1, 1, False
        elif 1 < tb <= 64:
            # rank loops (rank > 64) over partials: two 128-column blocks a program as well.
            # H200 qkv add_lora, graph replay, 4 / 16 adapters (probe_mixed_decode.py,
            # mixed-decode-r128-...json), 16x64 -> 16x128x2: rank 128 T=16 18.3 / 51.5 ->
            # 16.1 / 45.0 us, T=64 18.7 / 40.2 -> 15.9 / 38.8; T=1 lost (10.1 -> 13.2) and
            # T=256 with 4 adapters (28.8 -> 30.9)
            block_m, block_n, ncol, stages, prefetch = 16, 128, 2, 1, False
    if itemsize == 4:
        block_n = min(block_n, 64)
    block_n = min(block_n, max(16, next_pow2(n)))
    return ExpandConfig(block_m, block_n, block_r, _warps(warp, warps),
                        _stages(platform, family, stages), ncol, prefetch,
                        *_low_ranks("expand", tb, max_rank, partials),
                        _y_early(tb, block_r, partials))


# y read before the tile's rank is known, up to the rank box, its columns past the rank
# zeroed after the load: the load then waits on the token ids alone and Triton places it in
# the dot's operand layout (no shared-memory round trip). H200, ab_trees.py, 3 alternating
# rounds, 1 / 4 / 16 adapters, on everywhere (ab-yw-always-*-...json; the rule below against
# the old tree: ab-yearly-*-...json, H100 too), us:
# public decode expands gate_up r16 T=64 4.54 / 6.09 / 9.38 -> 4.38 / 5.79 / 9.00, T=16
# 2.68 / 3.51 / 8.38 -> 2.55 / 3.51 / 8.12, qkv r64 T=64 3.38 / 3.83 / 7.80 -> 3.16 / 3.33 /
# 7.08; add_lora over 4 partials r64 T=256 13.48 / 14.20 / 18.31 -> 12.93 / 13.80 / 17.98;
# prefill rank 64 qkv expand T=2048 19.07 -> 18.11, add_lora 32.37 -> 30.56. Off over 8
# partials (add_lora r16 T=1 4.28-4.29 -> 4.34-4.36 with every adapter count) and for
# rank-16 and rank-32 prefill tiles (gate_up r16 T=8192 233.4 -> 238.4, qkv 54.7 -> 55.4,
# add_lora 74.6 -> 75.2; rank 32 unmeasured: 80 -> 96 registers on sm_90 at gate_up).
# Measured on H100 / H200 only; other families take the same rule
def _y_early(tb: int, block_r: int, partials: int) -> bool:
    return partials < 8 if tb <= 256 else block_r == 64


# prefill expand programs spanning 2048 columns (64 x 128 tiles, 16 blocks, 8 warps) above
# rank 32, where every slice is a whole number of spans and there are at least 1.5 such
# programs per compute unit. H200, sweep_expand.py --configs (expand-span-...json, medians of
# 3 alternating rounds), shipped 64 x 64 x 8 blocks -> wide: expand 4096 r64 T=8192 (256
# programs, 1.9 per SM) 42.3 -> 39.8 us (76 -> 81% of copy), gate_up r64 T=8192 276.0 ->
# 269.2, T=2048 (448 programs) 78.9 -> 76.9; it lost at 1.0 per SM (expand T=4096, 21.7 ->
# 22.3 us; T=2048 14.5 -> 21.8) and on qkv, whose 1024-wide slices fill half a span
# (63.8 -> 72.7 us). Measured on H100 / H200 only.
_WIDE_EXPAND_FAMILIES = ("h100", "h200")
_WIDE_SPAN = 2048
# otherwise 16 column blocks instead of 8 (64 x 64 tiles, 4 warps: 4 programs a unit by
# registers) when the 16-block grid fits one wave and fills at least half of it; fewer,
# longer programs then pay fewer tile prologues and leave no second, partial wave. H200
# qkv r64, sweep_expand.py --configs (expand-trim-qkv-...json, medians of 3 rounds), 8 -> 16
# blocks: T=4096 37.2 -> 32.7 us (384 programs of 16 blocks), T=3072 30.5 -> 27.0 (288); 8
# kept where 16 leaves half a wave or less (T=2048: 19.5 vs 20.9; expand 4096 T=4096: 21.7
# vs 22.4) or spills into a second wave (qkv T=6144: 52.3 vs 56.7, T=8192: 64.0 vs 68.7)
_ONE_WAVE_PER_UNIT = 4


def expand_config(info: DeviceInfo, t: int, n: int, max_rank: int, itemsize: int,
                  widths: tuple[int, ...] | None = None, partials: int = 1) -> ExpandConfig:
    """Config for an expand of ``t`` tokens into ``n`` output columns from rank ``max_rank``.

    ``widths``: the slices' output widths (``n`` in total); with them, rank 33-64 prefill
    on the families in ``_WIDE_EXPAND_FAMILIES`` may take 2048-column programs, or
    1024-column ones when those fill one wave. ``partials``: how many split-K partial
    products of ``y`` the expand sums (``add_lora``; 1 for the public expand).
    """
    cfg = _expand_config(info.family, info.platform, _units(info), info.warp_size,
                         _token_bucket(t), n, max_rank, itemsize, max(1, partials))
    if not (widths and info.family in _WIDE_EXPAND_FAMILIES and t > 1024
            and 32 < max_rank <= 64 and itemsize <= 2):
        return cfg
    units = _units(info)
    if (all(w % _WIDE_SPAN == 0 for w in widths)
            and -(-t // 64) * (sum(widths) // _WIDE_SPAN) >= 1.5 * units):
        return ExpandConfig(64, 128, cfg.block_r, _warps(info.warp_size, 8), cfg.num_stages,
                            _WIDE_SPAN // 128, True, y_early=cfg.y_early)
    long_ = -(-t // 64) * sum(-(-w // (64 * 16)) for w in widths)  # programs of 16 blocks
    if ((cfg.block_m, cfg.block_n, cfg.col_blocks) == (64, 64, 8)
            and _ONE_WAVE_PER_UNIT * units / 2 < long_ <= _ONE_WAVE_PER_UNIT * units):
        cfg = replace(cfg, col_blocks=16)
    return cfg


def overlap_config(info: DeviceInfo, t: int, k: int, n: int, rank: int, itemsize: int,
                   slices: int = 1) -> OverlapConfig:
    """Config of ``add_lora``'s overlapped single launch (:func:`add_lora_overlap
    <lora_dispatch.kernels.triton.launch.add_lora_overlap>`, never selected by ``add_lora``).

    The expand's prefill tiling on 64-token tiles, one 64-row rank block per shrink program,
    64-wide K steps, 4 stages, 64 tiles of lead: picked from the H200 lead x split sweep
    (``probe_overlap.py``, ``probe-overlap2-...json``: qkv r64 T=8192 129.6 vs 96.1 us for
    the two launches, T=2048 56.0 vs 33.6, r16 T=8192 97.9 vs 75.9). The one-knob sweep
    around it (``probe-overlap3-...json``) found a better knob per shape (8 warps at r64
    T=8192: 124.7 us, 2 splits at T=2048: 48.5, BK 128 at r16: 95.9), none near the two
    launches; as the schedule is never selected, these were not made rules.
    """
    ec = expand_config(info, t, n, rank, itemsize)
    ec = ExpandConfig(64, ec.block_n, ec.block_r, ec.num_warps, ec.num_stages, ec.col_blocks,
                      ec.prefetch)
    bn = max(16, min(64, next_pow2(rank)))
    bk = 64 if itemsize <= 2 else 32
    stages = _stages(info.platform, info.family, 4)
    sc = ShrinkConfig(64, bn, bk, 1, ec.num_warps, stages, 1)
    return OverlapConfig(sc, ec, 64, ec.num_warps, stages)


@functools.lru_cache(maxsize=1024)
def _fused_config(family: str, platform: str, units: int, warp: int, k: int, n: int,
                  max_rank: int, itemsize: int) -> FusedConfig:
    block_k = 64 if itemsize == 4 or max_rank > 64 else 128
    block_k = min(block_k, max(16, next_pow2(k)))
    block_n = 128 if n >= 4096 else 64
    block_n = min(block_n, max(16, next_pow2(n)))
    return FusedConfig(16, block_n, block_k, _warps(warp, 4), _stages(platform, family, 3))


def fused_config(info: DeviceInfo, k: int, n: int, max_rank: int, itemsize: int) -> FusedConfig:
    """Config of the single-launch decode kernel."""
    return _fused_config(info.family, info.platform, _units(info), info.warp_size, k, n,
                         max_rank, itemsize)


def fused_max_tokens(info: DeviceInfo, num_slots: int, max_rank: int) -> int:
    """Largest ``T`` for which ``add_lora`` uses the fused single launch (0 = never).

    Every fused program recomputes its tile's shrink, so the redundant ``A`` reads grow with
    the number of column blocks and tiles. Measured on H200 (bf16, qkv 4096/1024/1024,
    rank 16): the split-K two-pass path replays in 7.9 us at ``T = 1`` against 9.7 us for the
    best fused config, and the gap widens with ``T``; so every family uses the two-pass path
    until a device where fusion measures faster is added here.
    """
    return _FUSED_MAX_TOKENS.get(info.family, 0)


_FUSED_MAX_TOKENS: dict[str, int] = {"h100": 0, "h200": 0}


# most tokens of an eager public shrink whose K splits take tickets instead of a zero fill:
# at T = 384-1024 one ticket launch ran level to 2.5 us faster by events than the fill and
# the split-K kernel (mean of 2 alternating rounds; rank 16: 0.9-2.5 us in 11 of 12 cells,
# rank 64 at T <= 768: 0.0-1.6), with one launch less (host -1.6 to +6.0 us on a noisy host;
# H100, 1-16 adapters, ab-ticket-prefill-...json); longer eager shrinks run the Gluon kernel
# on Hopper, and the ticket kernel was not timed there on other devices
TICKET_MAX_TOKENS = 1024


def ticket_mode() -> str:
    """``LORA_DISPATCH_SHRINK_TICKET`` as ``auto``, ``0`` or ``1`` (``ValueError`` for
    anything else)."""
    mode = os.environ.get(ENV_TICKET, "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"{ENV_TICKET} must be 'auto', '0' or '1', got {mode!r}")
    return mode


def shrink_ticket(info: DeviceInfo, t: int) -> bool:
    """Whether an eager public shrink of ``t`` tokens, split over K, runs as one launch
    whose splits order themselves on ticket words
    (:mod:`lora_dispatch.kernels.triton.shrink_ticket_kernel`) rather than after a zero fill
    of ``y`` (CUDA-graph capture keeps the fill: replayed, it is the faster of the two).

    Automatic: up to :data:`TICKET_MAX_TOKENS` tokens on every device. ``1``: at every
    ``T`` where the shrink splits K; ``0``: never. Read when a launch plan is built.
    """
    del info
    mode = ticket_mode()
    return mode == "1" or (mode == "auto" and t <= TICKET_MAX_TOKENS)


# fewest tokens for which the shrink reads through tensor descriptors (TMA), per family where
# that measured faster. None yet: on the H200 the TMA kernel was within -9% / +6% of the
# pointer kernel (benchmarks/probe_shrink_tma.py, shrink-tma-probe-...json)
_TMA_MIN_TOKENS: dict[str, int] = {}


def tma_mode() -> str:
    """``LORA_DISPATCH_TMA`` as ``auto``, ``0`` or ``1`` (``ValueError`` for anything else)."""
    mode = os.environ.get(ENV_TMA, "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"{ENV_TMA} must be 'auto', '0' or '1', got {mode!r}")
    return mode


def shrink_tma(info: DeviceInfo, t: int) -> bool:
    """Whether a shrink of ``t`` tokens reads ``x`` / ``A`` through TMA tensor descriptors.

    Automatic (``LORA_DISPATCH_TMA`` unset or ``auto``): CUDA devices of compute capability
    9.0 or newer (Hopper's tensor memory accelerator) whose family has a measured threshold
    in ``_TMA_MIN_TOKENS`` (none so far: off). ``1`` forces it for every ``T`` on any
    device the Triton release supports descriptors on (the interpreter included); ``0``
    turns it off. Read when a launch plan is built (plans are cached per weights and ``T``).

    Raises
    ------
    ValueError
        If ``LORA_DISPATCH_TMA`` is not ``auto``, ``0`` or ``1``.
    """
    mode = tma_mode()
    if mode != "auto":
        return mode == "1"
    cap = info.capability
    if info.platform != "cuda" or cap is None or cap < (9, 0):
        return False
    return t >= _TMA_MIN_TOKENS.get(info.family, 1 << 62)


def pdl(info: DeviceInfo) -> bool:
    """Whether ``add_lora``'s expand is launched with programmatic dependent launch.

    The shrink then lets the expand start while it runs; the expand reads its tile, the
    token ids and its first ``out`` block, and waits (``griddepcontrol.wait``) before it
    reads ``y``. Automatic (``LORA_DISPATCH_PDL`` unset or ``auto``): CUDA devices of
    compute capability 9.0 or newer with Triton 3.4+, outside the interpreter. ``0`` turns
    it off; ``1`` demands it (``RuntimeError`` where it cannot be). Only the fast
    launcher's native tier sets the launch attribute; launched any other way the wait is a
    no-op. Read when a launch plan is built (plans are cached per weights and ``T``).

    Raises
    ------
    ValueError
        If ``LORA_DISPATCH_PDL`` is not ``auto``, ``0`` or ``1``.
    """
    mode = os.environ.get(ENV_PDL, "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"{ENV_PDL} must be 'auto', '0' or '1', got {mode!r}")
    if mode == "0":
        return False
    try:
        import triton

        version = tuple(int(v) for v in triton.__version__.split(".")[:2])
    except (ImportError, ValueError):
        version = (0, 0)
    ok = (info.platform == "cuda" and info.capability is not None
          and info.capability >= (9, 0) and version >= (3, 4)
          and os.environ.get("TRITON_INTERPRET", "0") != "1")
    if mode == "1" and not ok:
        raise RuntimeError(f"{ENV_PDL}=1 needs a CUDA device of compute capability 9.0+ "
                           f"and Triton 3.4+ (device {info.name!r}, capability "
                           f"{info.capability}, Triton {'.'.join(map(str, version))})")
    return ok


@dataclass(frozen=True)
class GluonShrinkConfig:
    """The warp-specialized Gluon shrink (Hopper): ``block_m`` tokens a program, ``block_k``
    K step, ``block_r`` rank rows a slice (``>=`` every loaded rank: ``max_rank`` as planned,
    cut for eager ``add_lora`` to the largest loaded rank), ``stages`` shared-memory ring
    depth, consumer warps (4 a warpgroup: ``block_m / 16`` rows of 16 each), K splits,
    ``chunks``: ``block_k``-wide (64) chunks a stage moves in one box of each operand's
    ``[K / 64, rows, 64]`` view (1: plain ``[rows, block_k]`` boxes)."""

    block_m: int
    block_k: int
    block_r: int
    stages: int
    num_warps: int
    split_k: int
    chunks: int = 1

    def __post_init__(self) -> None:
        if self.block_m not in (64, 128) or self.num_warps != self.block_m // 16:
            raise ValueError("GluonShrinkConfig: block_m must be 64 (4 warps) or 128 (8 "
                             f"warps), got {self.block_m} with {self.num_warps} warps")
        if self.block_k not in (32, 64, 128):
            raise ValueError(f"GluonShrinkConfig: block_k must be 32, 64 or 128, got "
                             f"{self.block_k}")
        if self.block_r not in (16, 32, 64, 128, 256):
            raise ValueError(f"GluonShrinkConfig: block_r must be a power of two in 16..256, "
                             f"got {self.block_r}")
        if not 2 <= self.stages <= 8 or not 1 <= self.split_k <= 8:
            raise ValueError(f"GluonShrinkConfig: stages must be in 2..8 and split_k in 1..8, "
                             f"got {self.stages} and {self.split_k}")
        if self.chunks not in (1, 2, 4) or (self.chunks > 1 and self.block_k != 64):
            raise ValueError(f"GluonShrinkConfig: chunks must be 1, 2 or 4 (block_k 64 when "
                             f"above 1), got {self.chunks} with block_k {self.block_k}")


# families where the Gluon shrink runs automatically from this many tokens: H200 dense probe
# (probe_shrink_gluon.py, shrink-gluon-probe-...json) qkv r64 T=8192 25.9 us against 33.6 for
# the shipped shrink, T=2048 14.7 against 17.1; qkv r16 T=8192 21.9 against 24.1
_GLUON_MIN_TOKENS: dict[str, int] = {"h100": 2048, "h200": 2048}
# below that, by the slices' padded rank rows and the epilogue: eager H200 A/B, alternating
# rounds (ab-gluon-mid-...json; add_lora is qkv, the public shrink one slice): add_lora with
# 48 rows wins from T=512 (r16 T=1024 20.8 -> 18.8 us, T=512 16.8 -> 16.0), with 192 rows
# loses below 2048 (r64 T=1024 24.8 -> 25.7); the public shrink with 64 rows wins at T=1024
# (13.3 -> 11.7), with 16 rows loses (11.3 -> 11.7)
_GLUON_EARLY: dict[str, tuple[int, int]] = {"h100": (512, 1024), "h200": (512, 1024)}
# fewest tokens for the automatic Gluon shrink in eager calls; below, only inside CUDA-graph
# capture. The Gluon plan's host path costs 3-8 us more per add_lora than the Triton plan's
# (x's descriptor, the TMA contract check, two CUtensorMaps to key; H200 lent hosts,
# _host_gluon_group.py, host-gluon-group-...json) against a GPU gain of 0.5-0.7 us at T=512
# r16: a layer loop (base GEMM then add_lora, 15 alternating rounds) lost 52.1 -> 53.9 us
# there and won from T=1024 (98.1 -> 96.3, T=2048 179.0 -> 175.9)
_GLUON_EAGER_MIN_TOKENS: dict[str, int] = {"h100": 1024, "h200": 1024}


def gluon_graph_only(info: DeviceInfo, t: int) -> bool:
    """Whether an automatic Gluon plan for ``t`` tokens runs only inside CUDA-graph capture
    (below ``_GLUON_EAGER_MIN_TOKENS``: its host cost outweighs its GPU gain eagerly)."""
    return t < _GLUON_EAGER_MIN_TOKENS.get(info.family, 0)


def _gluon_min_tokens(family: str, rows: int, atomic: bool) -> int:
    """Fewest tokens for the automatic Gluon shrink: ``_GLUON_MIN_TOKENS``, or the earlier
    start of ``_GLUON_EARLY`` (workspace, atomic) where its A/B won: ``add_lora``'s
    workspace shrink with at most 64 padded rank rows, the public shrink with at least 64."""
    least = _GLUON_MIN_TOKENS.get(family, 1 << 62)
    early = _GLUON_EARLY.get(family)
    if early is not None and (rows >= 64 if atomic else rows <= 64):
        least = min(least, early[atomic])
    return least


_GLUON_SMEM = 224 << 10  # ring budget (the barriers and the epilogue need little more)
_GLUON_MAX_STAGES = 6  # 6 beat 4 by 16-25% and matched 7 (qkv r64 T=8192: 25.9 / 26.1 us)
_GLUON_MAX_ROWS = 256  # slices * block_r: one fp32 [block_m, 256] accumulator set


def gluon_mode() -> str:
    """``LORA_DISPATCH_GLUON`` as ``auto``, ``0`` or ``1`` (``ValueError`` for anything else)."""
    mode = os.environ.get(ENV_GLUON, "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"{ENV_GLUON} must be 'auto', '0' or '1', got {mode!r}")
    return mode


def _triton_version() -> tuple[int, int]:
    try:
        import triton

        return tuple(int(v) for v in triton.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return (0, 0)


def _gluon_platform_unfit(info: DeviceInfo, itemsize: int, available: bool) -> str | None:
    """Why no Gluon kernel of this backend runs here (``None`` when they can): the Gluon
    Hopper API of Triton 3.6, compiled (not interpreted), an sm_90 GPU, 16-bit weights."""
    if not available:
        return "this Triton release has no usable Gluon Hopper API"
    if _triton_version() != (3, 6):
        return f"the kernel is written for Triton 3.6's Gluon API, not {_triton_version()}"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "the Triton interpreter does not run Gluon"
    if info.platform != "cuda" or info.capability is None or info.capability[0] != 9:
        return f"it needs a Hopper GPU (sm_90), not {info.name!r} ({info.capability})"
    if itemsize != 2:
        return f"it takes 16-bit weights, not {8 * itemsize}-bit"
    return None


def _gluon_unfit(info: DeviceInfo, k: int, slices: int, max_rank: int, itemsize: int,
                 available: bool) -> str | None:
    """Why the Gluon shrink cannot run this shape here (``None`` when it can)."""
    why = _gluon_platform_unfit(info, itemsize, available)
    if why is not None:
        return why
    if slices > 3:
        return f"it takes at most 3 slices, not {slices}"
    if k % 64:
        return f"in_features must be a multiple of 64, got {k}"
    if slices * max(16, next_pow2(max_rank)) > _GLUON_MAX_ROWS:
        return (f"slices * padded rank must be <= {_GLUON_MAX_ROWS}, got {slices} * "
                f"{max(16, next_pow2(max_rank))}")
    return None


def shrink_gluon(info: DeviceInfo, t: int, k: int, slices: int, max_rank: int, itemsize: int,
                 available: bool = True, atomic: bool = False) -> GluonShrinkConfig | None:
    """Config of the warp-specialized Gluon shrink for ``t`` tokens, or ``None`` to keep the
    Triton kernels.

    Automatic (``LORA_DISPATCH_GLUON`` unset or ``auto``): Hopper families in
    ``_GLUON_MIN_TOKENS`` from that many tokens (fewer for some shapes:
    ``_gluon_min_tokens``), where the shape fits (Triton 3.6, 16-bit, ``K % 64 == 0``, at most 3
    slices of at most 256 padded rank rows together); the launch then takes it for weights
    whose loaded ranks fall short of ``max_rank`` by little enough (:func:`gluon_takes_ranks`:
    its work follows ``max_rank``), and eagerly only where the fast launcher's native tier
    launches it (through Triton's JIT it costs ~50 us more host time per ``add_lora``, see
    ``launch._pick``). ``1`` forces it for every ``T``, eager calls and any
    ranks included (``RuntimeError`` naming the reason where it cannot run); ``0`` turns it
    off.
    ``available``: whether the Gluon kernel module imported; ``atomic``: the public shrink's
    plan (K splits add with atomics into a zero-filled ``y``). Read when a
    launch plan is built (plans are cached per weights and ``T``).

    The grid is ``tiles x split_k`` with one program a compute unit (the ring takes most of
    its shared memory), so ``split_k`` tops up the programs of short batches; ``add_lora``'s
    plan (not ``atomic``) keeps at most two splits from T=2048 where the rank box is 64 or
    more, since its expand re-reads every split's partial products. The public
    shrink (``atomic``) takes it automatically while 64-token tiles fill under half the
    units, and beyond from ``_GLUON_PUBLIC_WIDE_ROWS`` padded rank rows (48: qkv at rank 16,
    one slice at rank 64), with one split (no zero fill, no atomics) and two-chunk boxes
    where its ring keeps 6 stages (``_gluon_chunks``). With ``[64, 64]`` boxes it lost there
    at rank 16 (H200 T=8192: 22.2 -> 24.1 us against the Triton shrink's split-2 atomics,
    ``ab-gluon-...json``; 21.9 -> 23.7 with one split, ``kernels-...json``).

    Raises
    ------
    ValueError
        If ``LORA_DISPATCH_GLUON`` is not ``auto``, ``0`` or ``1``.
    RuntimeError
        If it is ``1`` and the kernel cannot run this shape on this device.
    """
    mode = gluon_mode()
    if mode == "0":
        return None
    why = _gluon_unfit(info, k, slices, max_rank, itemsize, available)
    if why is not None:
        if mode == "1":
            raise RuntimeError(f"{ENV_GLUON}=1 but the Gluon shrink cannot run: {why}")
        return None
    br = max(16, next_pow2(max_rank))
    rows = slices * br
    if mode == "auto" and t < _gluon_min_tokens(info.family, rows, atomic):
        return None
    units = _units(info)
    wide = atomic and 2 * -(-t // 64) >= units
    if mode == "auto" and wide and rows < _GLUON_PUBLIC_WIDE_ROWS.get(info.family, 1 << 30):
        return None
    bm = 128 if rows <= 64 and t >= 8192 and not wide else 64
    bk = 64
    tiles = -(-t // bm)
    split = max(1, min(4, units // tiles, k // (bk * 4)))
    if atomic and 2 * tiles >= units:
        split = 1
    if not atomic and br >= 64 and t >= 2048:
        # every expand program re-reads each split's [block_m, br] fp32 partials: two splits
        # beat four from a rank box of 64 (add_lora T=2048, probe_add_prefill.py, kernel
        # time, 4 -> 2 splits: H100 qkv r64 35.5 -> 32.7 us, gate_up r64 107.2 -> 103.4, one
        # slice r64 25.7 -> 24.7; H200 qkv r64 31.2 -> 29.8, one slice rank 128 27.1 -> 25.4).
        # Four stay faster at ranks 16 / 32 (H100 qkv 25.4 vs 26.4, 27.8 vs 28.7) and for one
        # slice r64 at T=1024 (H200 18.9 vs 19.7)
        split = min(split, 2)
    chunks, stages = gluon_ring(k, bm, rows, _gluon_chunks(info, rows, split), itemsize)
    return GluonShrinkConfig(bm, bk, br, stages, bm // 16, split, chunks)


def gluon_ring(k: int, block_m: int, rows: int, chunks: int, itemsize: int,
               max_stages: int = _GLUON_MAX_STAGES) -> tuple[int, int]:
    """``(chunks, stages)`` of a Gluon shrink ring for ``block_m`` tokens and ``rows`` padded
    rank rows: ``chunks`` halved until ``K`` splits into whole boxes and two stages fit
    ``_GLUON_SMEM``, then as many stages (up to ``max_stages``) as fit."""
    stage = (block_m + rows) * 64 * itemsize  # one 64-wide chunk of x and A
    while chunks > 1 and (k % (64 * chunks) or _GLUON_SMEM < 2 * stage * chunks):
        chunks //= 2
    return chunks, min(max_stages, _GLUON_SMEM // (stage * chunks))


# families whose public shrink takes the Gluon shrink (one split, writing its own zeros) also
# where 64-token tiles fill half the units or more, from this many padded rank rows (slices x
# rank box). Events, cold L2, against the pointer shrink with split-2 atomics
# (ab-gluon-chunks-...json; qkv r16 and one slice r64 with two-chunk boxes):
#   H100 (two machines): qkv r64 (192 rows) T=6144 33.0 -> 29.2 us, T=8192 36.7 -> 33.9;
#     qkv r16 (48) T=6144 26.1 -> 24.9, T=8192 30.6 -> 30.2 and 29.7 -> 30.2; one slice r64
#     (64) 24.9 -> 24.8, T=8192 30.4 -> 29.8;
#   H200: qkv r64 30.0 -> 25.3, 32.1 -> 27.9; qkv r16 21.9 -> 19.9, 23.6 -> 23.3; one slice
#     r64 20.8 -> 19.3, 23.7 -> 23.4.
# One slice r16 (16 rows) kept the pointer shrink: H100 T=8192 28.5 -> 29.0, H200 even.
_GLUON_PUBLIC_WIDE_ROWS: dict[str, int] = {"h100": 48, "h200": 48}
# families whose Gluon shrink with one K split moves two 64-wide chunks a stage, up to this
# many padded rank rows (boxes of the operands' [K / 64, rows, 64] views: 256 contiguous
# bytes of each x row a box, the ring keeps 6 stages there). Against [64, 64] boxes, one split
# (ab-gluon-chunks-...json): public shrink, H100 one slice r64 T=8192 30.8 -> 29.7 and 31.0 ->
# 29.8 us, r16 30.0 -> 28.9, qkv r16 30.8 -> 30.2, T=6144 25.7 -> 24.9; H200 qkv r16 T=6144
# 22.0 -> 19.9, T=8192 24.5 -> 23.3, one slice r64 21.8 -> 19.3, 24.3 -> 23.4; add_lora's
# workspace shrink, H200 qkv r16 T=6144 61.1 -> 57.7 (T=8192 takes two splits). Where the
# ring drops to 3 stages (qkv r64) they lost (H100 public 33.9 -> 38.7, add_lora 108.5 ->
# 112.5; H200 27.9 -> 34.8, 84.5 -> 91.7), as did four K splits at T=2048 (H100 qkv r16
# 15.0 -> 16.0)
_GLUON_CHUNKS_ROWS: dict[str, int] = {"h100": 64, "h200": 64}


def _gluon_chunks(info: DeviceInfo, rows: int, split: int) -> int:
    """``[64]``-wide chunks of ``K`` a Gluon shrink stage moves in one box of each operand's
    ``[K / 64, rows, 64]`` view (1: ``[rows, 64]`` boxes of the 2-D operands): two with one
    K split up to ``_GLUON_CHUNKS_ROWS`` padded rank rows."""
    if split == 1 and rows <= _GLUON_CHUNKS_ROWS.get(info.family, 0):
        return 2
    return 1


@dataclass(frozen=True)
class GluonExpandConfig:
    """The Gluon expand with ``out`` in a shared-memory ring (Hopper): ``block_m`` tokens a
    program (16 per warp), ``block_n`` columns a block, ``col_blocks`` blocks a program,
    ``stages`` depth of the ``out`` ring (loads ``stages - 2`` blocks ahead), warps,
    ``b_stages`` depth of the ``B`` ring, ``b_block`` columns a ``B`` box (one wgmma; 0:
    ``block_n``, else 64 below a ``block_n`` of 128: two wgmmas a block)."""

    block_m: int
    block_n: int
    col_blocks: int
    stages: int
    num_warps: int
    b_stages: int
    b_block: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.b_stages <= 8:
            raise ValueError(f"GluonExpandConfig: b_stages must be in 2..8, got "
                             f"{self.b_stages}")
        if self.block_m not in (64, 128) or self.num_warps != self.block_m // 16:
            raise ValueError("GluonExpandConfig: block_m must be 64 (4 warps) or 128 (8 "
                             f"warps), got {self.block_m} with {self.num_warps} warps")
        if self.block_n not in (64, 128):
            raise ValueError(f"GluonExpandConfig: block_n must be 64 or 128, got "
                             f"{self.block_n}")
        if self.b_block not in (0, 64, self.block_n):
            raise ValueError(f"GluonExpandConfig: b_block must be 0, 64 or block_n, got "
                             f"{self.b_block}")
        if not 3 <= self.stages <= 8 or not 1 <= self.col_blocks <= 64:
            raise ValueError(f"GluonExpandConfig: stages must be in 3..8 and col_blocks in "
                             f"1..64, got {self.stages} and {self.col_blocks}")


# families and fewest tokens where the Gluon expand runs automatically: H200, cold L2,
# three runs (probe_expand_tma.py, expand-tma-probe{,2,3}-...json), 64x64 blocks, 16 a
# program, 4 stages: qkv r64 T=8192 64.0-64.4 -> 60.3-61.6 us, T=4096 32.7 -> 31.2, gate_up
# r64 T=8192 271.8-272.0 -> 257.4-261.2; no gain on a 4096-wide single slice (39.7-39.9 ->
# 39.9), at T=2048 (18.8-19.4 -> 19.6) or at rank 16 (qkv 54.5-54.9 -> 55.6)
_GLUON_EXPAND_MIN_TOKENS: dict[str, int] = {"h100": 4096, "h200": 4096}
_GLUON_EXPAND_RANKS = (64,)  # max_rank of the automatic choice
_GLUON_EXPAND_MIN_OUT = 6144  # sum of the slices' widths
# families where the Triton expand stays ahead on wide outputs (sum of the slices' widths
# above this): H100, cold L2, 3 rounds (sweep-gluon-expand-rings-h100-...json):
# gate_up r64 T=8192 Triton 349.6-350.6 us against Gluon 360.4-361.0 (every ring depth; at
# T=4096 Gluon 184.0 against 185.7), while qkv r64 gains (T=8192 79.5 -> 77.3, T=4096 39.8 ->
# 38.9; sweep-gluon-expand-gateup-...json too); on the H200 gate_up gains as well
_GLUON_EXPAND_MAX_OUT: dict[str, int] = {"h100": 16384}
_GLUON_EXPAND_RANKS_FIT = (16, 32, 64, 128)  # B's [block_n, max_rank] TMA box and wgmma K


def gluon_expand_mode() -> str:
    """``LORA_DISPATCH_GLUON_EXPAND`` as ``auto``, ``0`` or ``1`` (``ValueError`` otherwise)."""
    mode = os.environ.get(ENV_GLUON_EXPAND, "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"{ENV_GLUON_EXPAND} must be 'auto', '0' or '1', got {mode!r}")
    return mode


def _gluon_expand_unfit(info: DeviceInfo, widths: tuple[int, ...], max_rank: int,
                        itemsize: int, block_n: int, available: bool) -> str | None:
    """Why the Gluon expand cannot run these weights here (``None`` when it can)."""
    why = _gluon_platform_unfit(info, itemsize, available)
    if why is not None:
        return why
    if max_rank not in _GLUON_EXPAND_RANKS_FIT:
        return f"max_rank must be one of {_GLUON_EXPAND_RANKS_FIT}, got {max_rank}"
    if any(o % block_n for o in widths):
        return f"every slice width must be a multiple of {block_n}, got {tuple(widths)}"
    return None


def expand_gluon(info: DeviceInfo, t: int, widths: tuple[int, ...], max_rank: int,
                 itemsize: int, available: bool = True) -> GluonExpandConfig | None:
    """Config of the Gluon expand (``out`` streamed through a TMA ring) for ``t`` tokens, or
    ``None`` to keep the Triton expand.

    Automatic (``LORA_DISPATCH_GLUON_EXPAND`` unset or ``auto``): Hopper families in
    ``_GLUON_EXPAND_MIN_TOKENS`` from that many tokens, for ``max_rank`` 64 and slices at
    least ``_GLUON_EXPAND_MIN_OUT`` (and on H100 at most ``_GLUON_EXPAND_MAX_OUT``) wide
    together, where it fits (Triton 3.6, 16-bit weights,
    ``max_rank`` in 16 / 32 / 64 / 128, slice widths multiples of 64). The launch then takes
    it for an ``out`` of the weights' dtype that meets the TMA contract, for weights whose
    loaded ranks fall short of ``max_rank`` by little enough (:func:`gluon_takes_ranks`:
    ``B``'s box is ``max_rank`` wide), eagerly where the fast launcher's native tier launches
    it. ``1`` forces it for every ``T`` and any ranks (``RuntimeError`` naming the reason
    where it cannot run); ``0`` turns it off. Read when a launch plan is built. Blocks are
    64 columns, or 128 (``_GLUON_EXPAND_WIDE_BLOCKS``: gate_up widths from 1024 tokens on
    the H200, rank 64); the token tile and column span fill the last wave where measured.

    Raises
    ------
    ValueError
        If ``LORA_DISPATCH_GLUON_EXPAND`` is not ``auto``, ``0`` or ``1``.
    RuntimeError
        If it is ``1`` and the kernel cannot run these weights on this device.
    """
    mode = gluon_expand_mode()
    if mode == "0":
        return None
    bn = 64
    why = _gluon_expand_unfit(info, tuple(widths), max_rank, itemsize, bn, available)
    if why is not None:
        if mode == "1":
            raise RuntimeError(f"{ENV_GLUON_EXPAND}=1 but the Gluon expand cannot run: {why}")
        return None
    wide_from = _GLUON_EXPAND_WIDE_BLOCKS.get(info.family)
    wide = (wide_from is not None and sum(widths) > wide_from[1] and max_rank == 64
            and not any(o % 128 for o in widths))
    least = wide_from[0] if wide else _GLUON_EXPAND_MIN_TOKENS.get(info.family, 1 << 62)
    if mode == "auto" and (t < least
                           or max_rank not in _GLUON_EXPAND_RANKS
                           or sum(widths) < _GLUON_EXPAND_MIN_OUT
                           or sum(widths) > _GLUON_EXPAND_MAX_OUT.get(info.family, 1 << 62)):
        return None
    if wide and t >= wide_from[0]:
        ncol = _gluon_expand_wide_fit(_units(info), _smem_per_unit(info.family), t,
                                      tuple(widths), max_rank, itemsize)
        return GluonExpandConfig(64, 128, ncol, 4, 4, 2)  # rings: out 4, B 2 (96 KB)
    bm, ncol = 64, 16
    if info.family in _WAVE_FIT_FAMILIES and max_rank == 64:  # measured at rank 64
        bm, ncol = _gluon_expand_fit(_units(info), _smem_per_unit(info.family), t,
                                     tuple(widths), max_rank, itemsize, bn)
    stages, b_stages = _GLUON_EXPAND_RINGS[bm]
    return GluonExpandConfig(bm, bn, ncol, stages, bm // 16, b_stages)


# ring depths (out, B) by token tile: out's loads run stages - 2 blocks ahead, B's
# min(that, b_stages - 1). 64-token tiles: 5 / 3 (64 KB at rank 64, three programs an SM, as
# the old shared 4 / 4) against 4 / 4, H200 qkv r64, 4 adapters, cold L2, 3 rounds within
# 0.3% (sweep_gluon_expand.py, sweep-gluon-expand-rings{,2}-...json): T=8192 61.06 -> 59.86 us,
# T=4096 31.78 -> 31.23, gate_up T=8192 266.98 -> 265.34, add_lora T=8192 86.75 -> 85.38,
# 64 x 8 blocks at T=6144 47.46 -> 46.24; 128-token tiles keep 4 / 4 (5 / 3: T=5120 39.52 ->
# 42.37, gate_up 178.1 -> 191.3). 6 / 2 won at qkv T=4096 (30.69) and on the H100 (qkv
# T=8192 76.45 against 77.34) but lost gate_up on the H200 (269.14); 8 / 2 lost 6-22%
_GLUON_EXPAND_RINGS = {64: (5, 3), 128: (4, 4)}
# families taking 128-column blocks (out boxes of 2 x 64 columns, one run of 256 bytes a row;
# rings 4 / 2: 96 KB, two programs an SM) from (tokens, total width above): a TMA stream of
# [64, 64] boxes alone reaches 85.8% of the copy on [8192, 6144] and 87.3% on [8192, 28672],
# [64, 2, 64] boxes 93.3% / 95.8% (probe_tma_rmw.py, tma-rmw-...json). H200 gate_up r64, 4
# adapters, cold L2, 3 rounds (sweep_gluon_expand.py, sweep-gluon-expand-wide-...json), 64 x
# 16 blocks of 64 -> 64 x 16 of 128: T=8192 266.1 -> 252.6 us (and 265.6 -> 253.0, 265.9 ->
# 252.4 in two more runs), T=4096 141.2 -> 139.3, T=5120 169.9 -> 171.9; on qkv widths it
# lost (T=8192 60.0 -> 65.9, T=4096 30.9 -> 34.7; two 64-column B boxes a block, 3 / 2
# rings and three programs an SM: 58.8 at T=8192 but 32.0 at T=4096, 52.1 at T=6144 against
# 46.3)
# From 1024 tokens (H200 gate_up r64, 4 adapters, cold L2, 3 rounds, against the shipped
# choice: the Triton expand below 4096 tokens, 64-column Gluon blocks from 4096 to 8191;
# sweep-gluon-expand-t2048-...json, sweep-gluon-expand-wide-t-...json), 128-column blocks
# with the col_blocks of _gluon_expand_wide_fit: T=1024 54.4 -> 40.0 us, 1536 72.6 -> 59.1,
# 2048 77.4 -> 70.9, 2560 97.7 -> 93.4, 3072 114.1 -> 105.3, 3584 121.9 -> 115.7, 4096
# 141.1 -> 133.7, 4608 152.7 -> 147.4, 5120 169.3 -> 167.3, 6144 201.7 -> 199.9. Rank 16
# keeps the Triton expand (T=2048 64.0 against 65.2-72.0 us for every Gluon tiling), as do
# qkv widths and one 4096-wide slice at T=2048 (18.5 / 14.0 us against 19.0-24.8 / 14.9-24.0)
_GLUON_EXPAND_WIDE_BLOCKS: dict[str, tuple[int, int]] = {"h200": (1024, 16384)}
# col_blocks of the 128-column tilings, the first kept on ties. 12 blocks (1536 columns) were
# the fastest at T=1536 / 2560 / 5120 / 6144 (56.1, 86.9, 162.9, 193.4 us), which no wave
# count of its programs explains (their last program of a 14336-wide slice is two thirds
# full); they lost at T=1024 and 2048 by 10-29%, so they are left out
_GLUON_EXPAND_WIDE_COLS = (16, 8)


def _gluon_expand_wide_fit(units: int, smem: int, t: int, widths: tuple[int, ...], rank: int,
                           itemsize: int) -> int:
    """``col_blocks`` of 64-token, 128-column Gluon expand programs whose grid's last wave
    is fullest (:data:`_GLUON_EXPAND_WIDE_COLS`; rings of 4 ``out`` and 2 ``B`` stages)."""
    per = (4 * 64 + 2 * rank) * 128 * itemsize  # [64, 128] out boxes, [128, rank] B boxes
    return _fullest_last_wave(_GLUON_EXPAND_WIDE_COLS, lambda n: (
        -(-t // 64) * sum(-(-w // (128 * n)) for w in widths), units * max(1, smem // per)))


# The Gluon kernels' work follows max_rank: a slot's A box is max_rank rows a slice (the
# shrink), its B box max_rank columns (the expand). Weights whose loaded slots have lower
# ranks take them while the bytes those boxes read past the real ranks, if every loaded slot
# is used, stay under this share of the stream the kernel is there for: x (the shrink), out
# read and written (the expand). H200, qkv, max_rank 64, bf16, cold L2, 3 alternating rounds
# (ab_mixed_ranks.py, ab-mixed-ranks-...json), add_lora Triton -> Gluon kernels: T=8192,
# 4-16 adapters of ranks 8-64 (A past the ranks 3.5-20% of x) 96.2-98.9 -> 85.3-88.1 us;
# T=4096 4 adapters 53.0 -> 47.1; T=2048 4 adapters 33.0 -> 31.8 (the shrink), 16 adapters
# (80% of x) 36.5 -> 36.7; 128 adapters at T=8192 (112-159% of x) 120.0 / 128.8 -> 127.9 /
# 132.6. The expand alone won at every shape tried (B past the ranks up to 27% of out's
# bytes: 79.7 -> 77.9 us), so its share is where that was measured, not a break-even.
_GLUON_PAD_SHARE = {"shrink": 0.5, "expand": 0.25}


def gluon_takes_ranks(kernel: str, slices: int, deficit: int, t: int) -> bool:
    """Whether the automatic Gluon ``kernel`` (``"shrink"`` or ``"expand"``) takes ``t``
    tokens over weights whose loaded slots fall ``deficit`` ranks short of ``max_rank`` in
    all (``sum(max_rank - rank)`` over loaded slots; 0: uniform ranks, always taken).

    The shrink reads ``slices * deficit`` rows of ``A`` past the real ranks against ``x``'s
    ``t`` rows of the same width; the expand ``deficit`` columns of ``B`` past them against
    ``out``'s ``2 t`` rows (read and written) of the same width: each is taken while that
    excess stays within ``_GLUON_PAD_SHARE`` of its stream."""
    if kernel not in _GLUON_PAD_SHARE:
        raise ValueError(f"kernel must be 'shrink' or 'expand', got {kernel!r}")
    if deficit <= 0:
        return True
    excess = slices * deficit if kernel == "shrink" else deficit
    stream = t if kernel == "shrink" else 2 * t
    return excess <= _GLUON_PAD_SHARE[kernel] * stream


# the Gluon expand's tiling where its grid quantizes into waves (H100 / H200): of (64-token
# tiles, 16 blocks a program), (128, 16), (64, 8), the grid whose last wave is fullest at
# the programs a unit's shared memory holds (the out and B rings, _GLUON_EXPAND_RINGS:
# 64 KB / 96 KB a program at 64 / 128 tokens, rank 64: 3 / 2 an SM); earlier on ties. H200
# qkv r64, cold L2, 3 alternating rounds (sweep_gluon_expand.py, sweep-gluon-expand-...json),
# shipped (64, 16) -> pick (4-stage rings then): T=4608 47.2 -> 36.6 us, 5120 47.5 -> 39.6,
# 5632 47.1 -> 42.4 (all (128, 16): (64, 16) spilled 1.1-1.3 waves), 6144 48.9 -> 47.1
# ((64, 8)); add_lora r64 T=5120 69.1 -> 60.3, 6144 70.9 -> 68.2; (64, 16) stays at T=4096,
# 7168 and 8192, where it was fastest
_GLUON_EXPAND_TILINGS = ((64, 16), (128, 16), (64, 8))


def _gluon_expand_fit(units: int, smem: int, t: int, widths: tuple[int, ...], rank: int,
                      itemsize: int, block_n: int) -> tuple[int, int]:
    """``(block_m, col_blocks)`` of :data:`_GLUON_EXPAND_TILINGS` whose grid's last wave is
    fullest (``cdiv(t, block_m)`` token tiles: segment tails and idle tiles left out), where
    the first one's grid spills into a second wave; the first one where it fits one wave or
    spans more than two (gate_up r64 T=5120, 5.7 waves: within 3% of the best tiling)."""
    def grid(c: tuple[int, int]) -> tuple[int, int]:
        bm, ncol = c
        so, sb = _GLUON_EXPAND_RINGS[bm]
        per = (so * bm + sb * rank) * block_n * itemsize
        return (-(-t // bm) * sum(-(-w // (block_n * ncol)) for w in widths),
                units * max(1, smem // per))

    programs, slots = grid(_GLUON_EXPAND_TILINGS[0])
    if -(-programs // slots) != 2:
        return _GLUON_EXPAND_TILINGS[0]
    return _fullest_last_wave(_GLUON_EXPAND_TILINGS, grid)
