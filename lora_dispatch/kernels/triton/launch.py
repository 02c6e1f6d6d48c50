"""Host side of the Triton backend: launch plans cached per weights and shape, then launches.

A *plan* holds everything about a launch that depends only on static shapes (the weights'
layout, ``T``, the output dtype): block sizes, grid, constexprs, output strides. Plans are
built once (configs from :mod:`lora_dispatch.devices.configs`) and cached on the
:class:`~lora_dispatch.weights.LoRAWeights` object (or, for the ``WeightsView`` used inside
``torch.compile``, in a module table keyed by the layout). A call then allocates its output,
reads the strides of ``x`` / ``base_out`` and launches: no host reads of device data, grids
from static maxima only, so every path is CUDA-graph capturable.
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import torch

from lora_dispatch.batch import tile_index
from lora_dispatch.devices import configs
from lora_dispatch.devices import registry as _registry
from lora_dispatch.devices.info import describe
from lora_dispatch.launchers import native as _native
from lora_dispatch.weights import SUPPORTED_DTYPES

from .expand_gluon_kernel import b_descriptor, expand_gluon_kernel, out_descriptor, out_tile
from .expand_kernel import expand_kernel
from .fill_kernel import ZERO_BLOCK, zero_kernel
from .fused_kernel import fused_kernel
from .overlap_kernel import SYNC_HEAD, overlap_kernel
from .shrink_gluon_kernel import AVAILABLE as GLUON_AVAILABLE
from .shrink_gluon_kernel import a_descriptor, rows_descriptor, shrink_gluon_kernel, x_tile
from .shrink_kernel import shrink_kernel
from .shrink_ticket_kernel import SWEEP_ROWS, shrink_ticket_kernel
from .shrink_tma_kernel import shrink_tma_kernel

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4: no host tensor descriptors, pointer loads only
    TensorDescriptor = None

__all__ = ["shrink", "expand", "add_lora", "add_lora_two_pass", "add_lora_fused",
           "add_lora_overlap", "plan_for", "release_workspaces", "workspace_bytes"]

PREC = "ieee"


class GluonPlan(NamedTuple):
    """The warp-specialized Gluon shrink's launch (:mod:`.shrink_gluon_kernel`)."""

    grid: tuple[int, int]
    cfg: configs.GluonShrinkConfig
    cx: tuple  # S, R, TILE, STAGES, ATOMIC, FILL, GATHER, PDL
    forced: bool  # LORA_DISPATCH_GLUON=1: for any ranks
    tile: tuple  # x's descriptor tile and layout (shrink_gluon_kernel.x_tile)
    graph_only: bool = False  # automatic, too few tokens to pay its host cost eagerly
    cap: int = 0  # the plan's bound on the loaded ranks (0: max_rank)


class ShrinkPlan(NamedTuple):
    grid: tuple[int, int]
    nb: int
    k_split: int
    split: int
    meta: dict
    cx: tuple  # constexprs in signature order (positional: no keyword parsing per call)
    num_warps: int
    num_stages: int
    tail: tuple  # cx then the launch-option slots of a launch group
    tma: bool = False  # read x / A through tensor descriptors (shrink_tma_kernel)
    gluon: GluonPlan | None = None  # the Gluon kernel (this plan's split is its own)
    alt: ShrinkPlan | None = None  # the Gluon plan, taken where x and the ranks allow


class TicketPlan(NamedTuple):
    """The public decode shrink in one launch (:mod:`.shrink_ticket_kernel`): ``ShrinkPlan``
    ``base``'s tiling, its K splits ordered on the batch's ticket words."""

    grid: tuple[int, int]
    words: int  # ticket words of the tile programs (one per program column)
    cx: tuple
    num_warps: int
    num_stages: int
    tail: tuple  # cx then the launch-option slots of _TGROUP
    base: ShrinkPlan


class GluonExpandPlan(NamedTuple):
    """The Gluon expand's launch (:mod:`.expand_gluon_kernel`)."""

    grid: tuple[int]
    nb: int
    cfg: configs.GluonExpandConfig
    cx: tuple  # S, TILE, SPLIT, NCOL, STAGES, BSTAGES, ALIGN, PDL, num_warps
    tile: tuple  # out's descriptor tile and layout (expand_gluon_kernel.out_tile)
    forced: bool  # LORA_DISPATCH_GLUON_EXPAND=1: for any ranks
    cap: int = 0  # the plan's bound on the loaded ranks, B's box width (0: max_rank)


class ExpandPlan(NamedTuple):
    grid: tuple[int]
    nb: int
    meta: dict
    cx: tuple
    num_warps: int
    num_stages: int
    tail: tuple
    gluon: GluonExpandPlan | None = None  # taken where out and the ranks allow


_OVERLAP_CX = ("S", "R", "TILE", "BM", "BNS", "BK", "RB", "EVEN_K", "BNE", "BR", "NCOL",
               "PREFETCH", "ALIGN", "PREC", "SPLIT")
_TICKET_CX = ("S", "R", "RCAP", "TILE", "BM", "BN", "BK", "RB", "EVEN_K", "PREC", "RLOW", "RMID",
              "SW")
_SHRINK_CX = ("S", "R", "RCAP", "TILE", "BM", "BN", "BK", "RB", "EVEN_K", "ATOMIC", "FILL",
              "PREC", "PDL", "RLOW", "RMID")
_EXPAND_CX = ("S", "R", "RCAP", "RMASK", "TILE", "SPLIT", "BM", "BN", "BR", "NCOL", "PREFETCH",
              "ALIGN", "PREC", "PDL", "TRIM", "RLOW", "RMID", "YEARLY")


try:
    from lora_dispatch.launchers import LaunchGroup

    _GROUP: LaunchGroup | None = LaunchGroup(shrink_kernel, expand_kernel)
    # the public shrink: its zero fill, then the split-K atomics
    _ZGROUP: LaunchGroup | None = LaunchGroup(zero_kernel, shrink_kernel)
    # the public shrink writing its own zeros, and the public expand (bound per call site)
    _SGROUP: LaunchGroup | None = LaunchGroup(shrink_kernel)
    _EGROUP: LaunchGroup | None = LaunchGroup(expand_kernel)
    # the public decode shrink without a fill (split-K ordered on the batch's tickets)
    _TGROUP: LaunchGroup | None = LaunchGroup(shrink_ticket_kernel)
except (ImportError, TypeError):  # no fast launcher: each kernel launches on its own
    _GROUP = _ZGROUP = _SGROUP = _EGROUP = _TGROUP = None
try:  # add_lora with the Gluon shrink (descriptors encoded by the native tier)
    _GGROUP: LaunchGroup | None = (None if _GROUP is None or shrink_gluon_kernel is None
                                   else LaunchGroup(shrink_gluon_kernel, expand_kernel))
except TypeError:  # the kernel is not a fast launcher
    _GGROUP = None
_GGROUP_OPTS = () if _GGROUP is None else _GGROUP.options(0)
try:  # add_lora at prefill: the shrink (pointer or Gluon), then the Gluon expand
    _XGROUP: LaunchGroup | None = (None if _GROUP is None or expand_gluon_kernel is None
                                   else LaunchGroup(shrink_kernel, expand_gluon_kernel))
    _GXGROUP: LaunchGroup | None = (None if _XGROUP is None or shrink_gluon_kernel is None
                                    else LaunchGroup(shrink_gluon_kernel, expand_gluon_kernel))
except TypeError:  # the Gluon kernels are not fast launchers
    _XGROUP = _GXGROUP = None
try:  # the public ops through the Gluon kernels: the fill then the split-K Gluon shrink, the
    # Gluon shrink writing its own zeros, the Gluon expand (descriptors encoded natively)
    _GZGROUP: LaunchGroup | None = (None if _ZGROUP is None or shrink_gluon_kernel is None
                                    else LaunchGroup(zero_kernel, shrink_gluon_kernel))
    _GSGROUP: LaunchGroup | None = (None if _GZGROUP is None
                                    else LaunchGroup(shrink_gluon_kernel))
    _GEGROUP: LaunchGroup | None = (None if _EGROUP is None or expand_gluon_kernel is None
                                    else LaunchGroup(expand_gluon_kernel))
except TypeError:  # the Gluon kernels are not fast launchers
    _GZGROUP = _GSGROUP = _GEGROUP = None
# their Gluon kernels' option slots (fixed at import, as _GROUP_OPTIONS)
_GS_OPTS = () if _GSGROUP is None else _GSGROUP.options(0)
_GE_OPTS = () if _GEGROUP is None else _GEGROUP.options(0)
# option slots of the group's kernels (fixed at import: plans outlive a swapped _GROUP)
_GROUP_OPTIONS = None if _GROUP is None else _GROUP.options
_TGROUP_OPTIONS = None if _TGROUP is None else _TGROUP.options
_ZERO_WARPS = 4
_ZERO_TAIL = (ZERO_BLOCK,) + (() if _ZGROUP is None else _ZGROUP.options(
    0, num_warps=_ZERO_WARPS, num_stages=1))


def _split_meta(meta: dict, names: tuple[str, ...], i: int) -> tuple:
    cx = tuple(meta[n] for n in names)
    opts = () if _GROUP_OPTIONS is None else _GROUP_OPTIONS(
        i, num_warps=meta["num_warps"], num_stages=meta["num_stages"])
    return cx, meta["num_warps"], meta["num_stages"], cx + opts


class OverlapPlan(NamedTuple):
    grid: tuple[int]
    ntile: int  # token tiles
    nbs: int  # shrink programs per tile
    nbe: int  # expand programs (column groups) per tile
    lag: int  # tiles the shrink runs ahead
    k_split: int  # K columns per split
    meta: dict
    cx: tuple
    num_warps: int
    num_stages: int


class AddPlan(NamedTuple):
    fused: ShrinkPlan | ExpandPlan | None
    shrink: ShrinkPlan | None
    expand: ExpandPlan | None
    ws_numel: int  # float32 workspace of the partial products [SPLIT, S, T, R]
    ys: tuple  # its strides
    # weak refs to [weights, batch, workspace], group slot pieces, bound, hot path, then the
    # Gluon-expand group's entry (:func:`_xgroup_entry`)
    memo: list
    overlap: OverlapPlan | None = None  # one launch, expand beside shrink
    alt: AddPlan | None = None  # the two passes with the Gluon shrink and its split


_VIEW_PLANS: dict[tuple, dict] = {}
_MEMO = 7  # AddPlan.memo's length


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _plans(w) -> dict:
    d = getattr(w, "__dict__", None)
    if d is not None:
        plans = d.get("_triton_plans")
        if plans is None:
            plans = d["_triton_plans"] = {}
        return plans
    key = (w.device, w.dtype, w.num_slots, w.num_slices, w.max_rank, w.in_features,
           w.out_features)
    plans = _VIEW_PLANS.get(key)
    if plans is None:
        plans = _VIEW_PLANS[key] = {}
    return plans


def _align(w) -> int:
    """Largest power of two (<= 16) dividing every slice offset and width."""
    a = 16
    for v in (*w.slice_offsets, *w.out_features):
        while v % a:
            a //= 2
    return a


def _tiles(t: int, block_m: int, num_slots: int) -> int:
    return _cdiv(t, block_m) + min(t, num_slots)


def _narrow_ranks(cfg, rcap: int, fits: bool = True) -> tuple[int, int]:
    """``(RLOW, RMID)`` of a plan whose rank box is ``rcap``: the config's narrow-path bounds
    (``low_rank``, ``mid_rank``) where they fall below the box and the kernel's tiling
    ``fits`` them, else 0."""
    low = cfg.low_rank if fits and 16 <= cfg.low_rank < rcap else 0
    return low, (cfg.mid_rank if low and low < cfg.mid_rank < rcap else 0)


def _shrink_plan(w, t: int, atomic: bool, split_k: int | None = None,
                 cfg: configs.ShrinkConfig | None = None, fill: bool = True,
                 pdl: int = 0, info=None, cap: int = 0) -> ShrinkPlan:
    """The Triton shrink's plan; where the registry picks the Gluon shrink for this shape,
    its plan (own tiling and K split) rides along in ``alt`` (see :func:`_pick`).

    ``cap`` (0: ``max_rank``) bounds every loaded rank: the configs, the rank blocks and the
    Gluon shrink's ``A`` boxes are those of weights whose ``max_rank`` is ``cap`` (see
    :func:`_cap`). Such a plan writes no column past ``cap``, so it cannot fill ``y``'s zeros
    (``FILL``): ``ValueError``."""
    k, s = w.in_features, w.num_slices
    r = cap or w.max_rank
    if cap and fill and atomic:
        raise ValueError("a capped shrink plan cannot write its own zeros (FILL)")
    info = describe(w.device) if info is None else info
    if cfg is None:
        cfg = configs.shrink_config(info, t, k, r, w.lora_a.element_size(), atomic, slices=s)
    gcfg = configs.shrink_gluon(info, t, k, s, r, w.lora_a.element_size(), GLUON_AVAILABLE,
                                atomic)
    plan = _shrink_plan_for(w, t, atomic, split_k, cfg, fill, pdl, info, None, cap)
    if gcfg is None:
        return plan
    return plan._replace(alt=_shrink_plan_for(w, t, atomic, split_k, cfg, fill, pdl, info,
                                              gcfg, cap))


def _shrink_plan_for(w, t: int, atomic: bool, split_k: int | None, cfg: configs.ShrinkConfig,
                     fill: bool, pdl: int, info, gcfg, cap: int = 0) -> ShrinkPlan:
    k, s, r = w.in_features, w.num_slices, w.max_rank
    rcap = cap or r
    split = cfg.split_k if split_k is None else split_k
    if gcfg is not None and split_k is None:
        split = gcfg.split_k
    k_split = _cdiv(_cdiv(k, split), 16) * 16
    if k_split >= cfg.block_k:
        k_split = _cdiv(k_split, cfg.block_k) * cfg.block_k
    if gcfg is not None:
        k_split = _cdiv(k_split, gcfg.block_k * gcfg.chunks) * gcfg.block_k * gcfg.chunks
    split = _cdiv(k, k_split)
    nb = _cdiv(s * _cdiv(rcap, cfg.block_n), cfg.rank_blocks)
    tma = configs.shrink_tma(info, t)
    if tma and TensorDescriptor is None:
        if configs.tma_mode() == "1":
            raise RuntimeError(f"{configs.ENV_TMA}=1 but this Triton release has no tensor "
                               "descriptors (triton.tools.tensor_descriptor, 3.4+)")
        tma = False
    tma = tma and k_split % cfg.block_k == 0 and (k * w.lora_a.element_size()) % 16 == 0
    fill = fill and atomic and split == 1
    # the narrower paths take the place of a program's one block of a slice's rows: no FILL
    # (they write no column past their rows)
    rlow, rmid = _narrow_ranks(cfg, rcap, rcap <= cfg.block_n and cfg.rank_blocks == 1
                               and not (fill or tma))
    meta = dict(
        S=s, R=r, RCAP=rcap, TILE=tile_index(cfg.block_m), BM=cfg.block_m, BN=cfg.block_n,
        BK=cfg.block_k, RB=cfg.rank_blocks,
        EVEN_K=(k % k_split == 0 and k_split % cfg.block_k == 0),
        ATOMIC=atomic and split > 1, FILL=fill, PREC=PREC, PDL=pdl, RLOW=rlow, RMID=rmid,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    gluon = None
    if gcfg is not None:
        gluon = GluonPlan(
            (_tiles(t, gcfg.block_m, w.num_slots), split), gcfg,
            (s, r, tile_index(gcfg.block_m), gcfg.stages, meta["ATOMIC"], meta["FILL"], True,
             bool(pdl)),
            configs.gluon_mode() == "1",
            x_tile(gcfg.block_m, gcfg.block_k, w.dtype, gcfg.chunks),
            configs.gluon_mode() != "1" and configs.gluon_graph_only(info, t), cap)
    return ShrinkPlan((nb * _tiles(t, cfg.block_m, w.num_slots), split), nb, k_split, split, meta,
                      *_split_meta(meta, _SHRINK_CX, 0), tma, gluon)


# most tokens whose expand reads B up to each slot's rank rounded up to 8 rather than RCAP:
# decode tiles move B once per few rows (H200, CUDA graphs, rank-16 adapters in a rank-64
# pool: gate_up T=64 9.52 -> 8.51 us, qkv T=256 6.70 -> 6.40, expand T=16 2.62 -> 2.52); above,
# the per-rank mask cost more than B's bytes (uniform rank 16 add_lora T=1024 18.5 -> 19.8 us,
# rank-32 expand T=8192 39.0 -> 40.3; ab-trees-rmask-...json)
_RMASK_TOKENS = 256


def _expand_plan(w, t: int, split: int, cfg: configs.ExpandConfig | None = None,
                 pdl: bool = False, info=None, cap: int = 0) -> ExpandPlan:
    """The Triton expand's plan; with the registry's configs (``cfg`` not given), the Gluon
    expand's plan rides along in ``gluon`` where the registry picks it for this shape.

    ``cap`` (0: ``max_rank``) bounds every loaded rank: configs (and the Gluon expand's ``B``
    boxes) are those of weights whose ``max_rank`` is ``cap`` (see :func:`_cap`)."""
    gluon = None
    r = cap or w.max_rank
    if cfg is None:
        info = describe(w.device) if info is None else info
        cfg = configs.expand_config(info, t, w.total_out, r, w.lora_b.element_size(),
                                    widths=tuple(w.out_features), partials=split)
        gcfg = configs.expand_gluon(info, t, tuple(w.out_features), r,
                                    w.lora_b.element_size(), expand_gluon_kernel is not None)
        if gcfg is not None:
            gnb = sum(_cdiv(o, gcfg.block_n * gcfg.col_blocks) for o in w.out_features)
            gluon = GluonExpandPlan(
                (gnb * _tiles(t, gcfg.block_m, w.num_slots),), gnb, gcfg,
                (w.num_slices, tile_index(gcfg.block_m), split, gcfg.col_blocks, gcfg.stages,
                 gcfg.b_stages, _align(w), bool(pdl), gcfg.num_warps),
                out_tile(gcfg.block_m, gcfg.block_n, w.dtype),
                configs.gluon_expand_mode() == "1", cap)
    span = cfg.block_n * cfg.col_blocks
    nb = sum(_cdiv(o, span) for o in w.out_features)
    rlow, rmid = _narrow_ranks(cfg, r)
    meta = dict(
        S=w.num_slices, R=w.max_rank, RCAP=r, RMASK=t <= _RMASK_TOKENS,
        TILE=tile_index(cfg.block_m), SPLIT=split,
        BM=cfg.block_m, BN=cfg.block_n, BR=cfg.block_r, NCOL=cfg.col_blocks,
        PREFETCH=cfg.prefetch, ALIGN=_align(w), PREC=PREC, PDL=pdl,
        TRIM=cfg.col_blocks > 1 and any(o % span for o in w.out_features),
        RLOW=rlow, RMID=rmid, YEARLY=cfg.y_early,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return ExpandPlan((nb * _tiles(t, cfg.block_m, w.num_slots),), nb, meta,
                      *_split_meta(meta, _EXPAND_CX, 1), gluon)


def _fused_plan(w, t: int, cfg: configs.FusedConfig | None = None) -> ExpandPlan:
    if cfg is None:
        cfg = configs.fused_config(describe(w.device), w.in_features, w.total_out, w.max_rank,
                                   w.lora_a.element_size())
    nb = sum(_cdiv(o, cfg.block_n) for o in w.out_features)
    meta = dict(
        S=w.num_slices, R=w.max_rank, TILE=tile_index(cfg.block_m), BM=cfg.block_m,
        BN=cfg.block_n, BK=cfg.block_k, BR=max(16, configs.next_pow2(w.max_rank)),
        EVEN_K=(w.in_features % cfg.block_k == 0), ALIGN=_align(w), PREC=PREC,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return ExpandPlan((nb * _tiles(t, cfg.block_m, w.num_slots),), nb, meta, (),
                      meta["num_warps"], meta["num_stages"], ())


def _overlap_plan(w, t: int, cfg: configs.OverlapConfig) -> AddPlan:
    """``add_lora`` as :mod:`overlap_kernel`'s single launch with the tilings of ``cfg``."""
    sc, ec = cfg.shrink, cfg.expand
    k, s, r = w.in_features, w.num_slices, w.max_rank
    k_split = _cdiv(_cdiv(k, sc.split_k), sc.block_k) * sc.block_k
    split = _cdiv(k, k_split)
    ntile = _tiles(t, sc.block_m, w.num_slots)
    nbs = _cdiv(s * _cdiv(r, sc.block_n), sc.rank_blocks) * split
    nbe = sum(_cdiv(o, ec.block_n * ec.col_blocks) for o in w.out_features)
    meta = dict(
        S=s, R=r, TILE=tile_index(sc.block_m), BM=sc.block_m, BNS=sc.block_n, BK=sc.block_k,
        RB=sc.rank_blocks, EVEN_K=k % k_split == 0, BNE=ec.block_n, BR=ec.block_r,
        NCOL=ec.col_blocks, PREFETCH=ec.prefetch, ALIGN=_align(w), PREC=PREC, SPLIT=split,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    op = OverlapPlan((ntile * (nbs + nbe),), ntile, nbs, nbe, min(cfg.lag, ntile), k_split,
                     meta, tuple(meta[n] for n in _OVERLAP_CX), cfg.num_warps, cfg.num_stages)
    return AddPlan(None, None, None, split * s * t * r, (s * t * r, t * r, r), [None] * _MEMO, op)


def plan_for(op: str, w, t: int, mode: str | None = None, split_k: int | None = None,
             cap: int = 0):
    """The cached launch plan of ``op`` (``shrink``, ``expand``, ``add``) for ``t`` tokens.

    ``mode`` (``add``) forces ``fused`` or ``two_pass``; by default the fused single
    launch is used up to :func:`~lora_dispatch.devices.configs.fused_max_tokens` tokens.
    ``mode="zero_fill"`` (``shrink``) keeps the zero fill before a single K split instead
    of the kernel writing its own zeros.
    ``split_k`` overrides the configured number of K splits of the shrink.
    ``cap`` (``expand``, two-pass ``add``; 0: none) plans for loaded ranks no larger than
    ``cap``: right only while that holds (see :func:`_cap`).
    """
    plans = _plans(w)
    key = (op, t, mode, split_k) if not cap else (op, t, mode, split_k, cap)
    plan = plans.get(key)
    if plan is not None:
        return plan
    if cap and (op == "shrink" or mode in ("fused", "overlap")):
        raise ValueError(f"cap is for the expand and the two-pass add_lora, not {op!r} "
                         f"with mode {mode!r}")
    if cap and not 16 <= cap < w.max_rank:
        raise ValueError(f"cap must be in 16..max_rank - 1 ({w.max_rank - 1}), got {cap}")
    if cap:
        plan = (_expand_plan(w, t, 1, cap=cap) if op == "expand"
                else _two_pass_plan(w, t, split_k, cap=cap))
    elif op == "shrink":
        plan = _shrink_plan(w, t, atomic=True, split_k=split_k, fill=mode != "zero_fill")
    elif op == "expand":
        plan = _expand_plan(w, t, 1)
    elif op == "add":
        info = describe(w.device)
        use_fused = mode == "fused" or (
            mode is None and t <= configs.fused_max_tokens(info, w.num_slots, w.max_rank))
        if use_fused:
            plan = AddPlan(_fused_plan(w, t), None, None, 0, (), [None] * _MEMO)
        elif mode == "overlap":
            plan = _overlap_plan(w, t, configs.overlap_config(
                info, t, w.in_features, w.total_out, w.max_rank, w.lora_a.element_size(),
                w.num_slices))
        else:
            plan = _two_pass_plan(w, t, split_k)
    else:
        raise ValueError(f"op must be 'shrink', 'expand' or 'add', got {op!r}")
    plans[key] = plan
    return plan


def _two_pass_plan(w, t: int, split_k: int | None = None,
                   shrink_cfg: configs.ShrinkConfig | None = None,
                   expand_cfg: configs.ExpandConfig | None = None, cap: int = 0) -> AddPlan:
    """``add_lora``'s split-K shrink into a workspace, then the expand summing its partial
    products (the registry's configs unless given; PDL where :func:`configs.pdl` allows;
    ``cap``: see :func:`_shrink_plan`)."""
    # the expand may start while the shrink runs (Hopper, native launches); the shrink lets
    # it in at once for decode (one wave) and as each program ends for prefill, where early
    # expand programs took slots from the shrink's later waves (H200 A/B,
    # ab-pdl-trigger-...json: add_lora T=1 6.64 -> 5.38 us graph at once, 6.29 at the end;
    # r64 T=8192 96.9 -> 95.1 us at the end, 100.4 at once)
    pdl = configs.pdl(describe(w.device))
    sp = _shrink_plan(w, t, atomic=False, split_k=split_k, cfg=shrink_cfg,
                      pdl=(1 if t <= 256 else 2) if pdl else 0, cap=cap)
    s_, r = w.num_slices, cap or w.max_rank  # the workspace's rank columns
    plans = [AddPlan(None, p, _expand_plan(w, t, p.split, cfg=expand_cfg, pdl=pdl, cap=cap),
                     p.split * s_ * t * r, (s_ * t * r, t * r, r, 1), [None] * _MEMO)
             for p in (sp._replace(alt=None), sp.alt) if p is not None]
    return plans[0]._replace(alt=plans[1]) if len(plans) > 1 else plans[0]


def _shrink_args(p: ShrinkPlan, x, xs, w, batch, y, t: int, ys) -> tuple:
    """``shrink_kernel``'s parameters before its constexprs, in signature order."""
    tm = batch.tile_map
    return (x, w.lora_a, y, w.ranks, w.scalings, batch.sorted_tokens, tm,
            t, w.in_features, w.num_slots, tm.shape[2], p.k_split, p.nb,
            xs[0], xs[1], ys[0], ys[1], ys[2])


def _expand_args(p: ExpandPlan, y, w, batch, out, os_, t: int, ys) -> tuple:
    """``expand_kernel``'s parameters before its constexprs, in signature order."""
    tm = batch.tile_map
    return (y, w.lora_b, out, w.ranks, w.slice_bounds, batch.sorted_tokens, tm,
            t, w.num_slots, tm.shape[2], w.total_out, p.nb,
            ys[0], ys[1], ys[2], ys[3], os_[0], os_[1])


# where the per-call values sit in those tuples (the launch group memoizes the rest)
_S_X, _S_Y, _S_XS = 0, 2, slice(13, 15)
_E_Y, _E_OUT, _E_YS, _E_OS = 0, 2, slice(13, 16), slice(16, 18)

# the native per-call path's ops and the codes of its layouts (launchers/hot.c)
OP_ADD, OP_SHRINK, OP_EXPAND = 0, 1, 2
V_X, V_XS0, V_XS1, V_XD, V_O, V_OS0, V_OS1, V_OD, V_Y, V_YS0, V_YS1, V_YS2 = range(12)
# add_lora's groups by descriptor kind (x's: 1, base_out's: 2): their varying slots in order
_ADD_LAYOUTS = (
    (V_X, V_XS0, V_XS1, V_O, V_OS0, V_OS1),
    (V_XD, V_X, V_XS0, V_XS1, V_O, V_OS0, V_OS1),
    (V_X, V_XS0, V_XS1, V_OD, V_O, V_OS0),
    (V_XD, V_X, V_XS0, V_XS1, V_OD, V_O, V_OS0),
)


def _tma_ready(x) -> bool:
    """``x`` meets the descriptor contract: 16-byte base and row stride, unit column stride."""
    xs = x.stride()
    return (xs[1] == 1 and xs[0] >= x.shape[1] and (xs[0] * x.element_size()) % 16 == 0
            and x.data_ptr() % 16 == 0)


def _rank_memo(w) -> tuple | None:
    """``(version, sum(max_rank - rank) over the loaded slots, the largest loaded rank rounded
    up to a power of two >= 16 where that is below max_rank (else 0), the number of loaded
    slots)`` of ``w`` (memoized per :attr:`version`); ``None`` for views inside
    ``torch.compile``, which carry no host ranks."""
    ranks = w.host_ranks
    if ranks is None:
        return None
    d = w.__dict__
    memo = d.get("_rank_memo")
    if memo is None or memo[0] != w.version:
        r = w.max_rank
        box = max(16, configs.next_pow2(max(ranks)))
        memo = d["_rank_memo"] = (w.version, sum(r - v for v in ranks if v),
                                  box if box < r else 0, sum(1 for v in ranks if v))
    return memo


def _rank_deficit(w, cap: int = 0) -> int | None:
    """``sum(cap - rank)`` over the loaded slots of ``w`` (``cap`` 0: ``max_rank``; 0: every
    loaded rank is the bound); ``None`` for views inside ``torch.compile``."""
    memo = _rank_memo(w)
    if memo is None:
        return None
    return memo[1] - memo[3] * (w.max_rank - cap) if cap else memo[1]


def _gluon_takes(kernel: str, w, t: int, cap: int = 0) -> bool:
    """Whether the automatic Gluon ``kernel`` (``shrink`` / ``expand``) takes ``t`` tokens over
    ``w``'s loaded ranks (:func:`configs.gluon_takes_ranks`: its work follows the plan's rank
    bound, ``cap`` or ``max_rank``)."""
    deficit = _rank_deficit(w, cap)
    if deficit is None:
        return False
    return not deficit or configs.gluon_takes_ranks(kernel, w.num_slices, deficit, t)


def _cap(w, x) -> int:
    """The rank bound an eager call over ``w`` plans for: the loaded ranks' power-of-two box
    (at least 16) where that is below ``max_rank``, else 0 (plan for ``max_rank``). Always 0
    during CUDA-graph capture (a graph outlives the loads) and for views inside
    ``torch.compile`` (no host ranks)."""
    memo = _rank_memo(w)
    if memo is None or not memo[2] or (x.is_cuda and _capturing()):
        return 0
    return memo[2]


_NATIVE_DESC: list = []  # [bool]: the Gluon shrink launches natively (computed once)


def gluon_native() -> bool:
    """Whether the Gluon shrink launches through the fast launcher's native tier, which
    encodes its tensor descriptors in C (otherwise Triton's JIT path: ~50 us of host time).
    """
    if not _NATIVE_DESC:
        ok = False
        if shrink_gluon_kernel is not None and hasattr(shrink_gluon_kernel, "launch_tier"):
            try:
                from lora_dispatch.launchers import launcher_mode, native

                ok = (launcher_mode() != "triton" and native.native_launch_enabled()
                      and native.available())
            except Exception:
                ok = False
        _NATIVE_DESC.append(ok)
    return _NATIVE_DESC[0]


def _pick(p, x, w, capturing: bool | None = None):
    """``p`` (a shrink or add plan), or its Gluon ``alt`` where ``x`` meets the TMA contract,
    the loaded ranks fall short of ``max_rank`` by little enough (:func:`_gluon_takes`: its
    work follows ``max_rank``), and the launch is cheap on the host: through the native tier
    (:func:`gluon_native`) from :func:`configs.gluon_graph_only`'s token count, or while a
    CUDA graph is being captured (replay has no host cost). ``LORA_DISPATCH_GLUON=1``: always.

    Through Triton's JIT path the Gluon launch costs ~50 us more host time per ``add_lora``
    (H200 host, qkv r64 T=8192: 13.9 -> 62.6 us, ``_host_gluon.py``), as much as the GPU
    time it saves. ``capturing`` overrides the capture check (benchmark labels).
    """
    a = p.alt
    if a is None or not _tma_ready(x):
        return p
    g = (a.shrink if isinstance(a, AddPlan) else a).gluon
    if g.forced:
        return a
    if g.graph_only or not gluon_native():
        if capturing is None:
            capturing = x.is_cuda and _capturing()
        if not capturing:
            return p
    return a if _gluon_takes("shrink", w, x.shape[0], g.cap) else p


def _desc_kind(p: ShrinkPlan, x, w) -> int:
    """Which shrink kernel plan ``p`` runs on ``x``: 2 the Gluon one, 1 the TMA one, 0 the
    pointer one (descriptor kernels need ``x`` to meet the TMA contract)."""
    if (p.gluon is None and not p.tma) or not _tma_ready(x):
        return 0
    return 2 if p.gluon is not None else 1


def _launch_shrink(p: ShrinkPlan, x, w, batch, y, t: int, ys: tuple | None = None) -> None:
    ys = y.stride() if ys is None else ys
    kind = _desc_kind(p, x, w)
    if kind == 2:
        _launch_shrink_gluon(p.gluon, p.k_split, x, w, batch, y, t, ys)
        return
    args = _shrink_args(p, x, x.stride(), w, batch, y, t, ys)
    if kind == 1:
        _launch_shrink_tma(p, x, w, args)
    else:
        shrink_kernel[p.grid](*args, *p.cx, num_warps=p.num_warps, num_stages=p.num_stages)


def _a_desc(w, c: configs.GluonShrinkConfig):
    """Descriptor of ``A [L * S * R, K]`` for the Gluon shrink's tiling ``c`` (kept on the
    weights object while its ``lora_a`` is the same tensor)."""
    a = w.lora_a
    d = getattr(w, "__dict__", None)
    key = (c.block_r, c.block_k, c.chunks)
    if d is not None:
        memo = d.get("_gluon_a_desc")
        if memo is not None and memo[0] is a and memo[1] == key:
            return memo[2]
    desc = a_descriptor(a.view(-1, w.in_features), c.block_r, c.block_k, c.chunks)
    if d is not None:
        d["_gluon_a_desc"] = (a, key, desc)
    return desc


def _gluon_fixed(g: GluonPlan, k_split: int, w, batch, y, t: int, ys: tuple) -> tuple:
    """:mod:`.shrink_gluon_kernel`'s parameters that do not depend on ``x``: those between
    ``x`` and its strides, and those after its strides (``num_warps``, a constexpr there,
    last)."""
    tm = batch.tile_map
    return ((y, w.ranks, w.scalings, batch.sorted_tokens, tm, t, w.in_features, w.num_slots,
             tm.shape[2], k_split), (ys[0], ys[1], ys[2], *g.cx, g.cfg.num_warps))


def _gluon_args(g: GluonPlan, k_split: int, x, w, batch, y, t: int, ys: tuple) -> tuple:
    """:mod:`.shrink_gluon_kernel`'s parameters in signature order."""
    xs = x.stride()
    a, b = _gluon_fixed(g, k_split, w, batch, y, t, ys)
    return (rows_descriptor(x, t, w.in_features, xs[0], g.tile), _a_desc(w, g.cfg), x, *a,
            xs[0], xs[1], *b)


def _launch_shrink_gluon(g: GluonPlan, k_split: int, x, w, batch, y, t: int,
                         ys: tuple) -> None:
    """:mod:`.shrink_gluon_kernel` with descriptors of ``x [T, K]`` and ``A [L * S * R, K]``."""
    shrink_gluon_kernel[g.grid](*_gluon_args(g, k_split, x, w, batch, y, t, ys))


def _launch_shrink_tma(p: ShrinkPlan, x, w, args: tuple) -> None:
    """``shrink_tma_kernel`` with descriptors of ``x [T, K]`` and ``A [L * S * R, K]``."""
    m, k = p.meta, w.in_features
    a = w.lora_a.view(-1, k)  # [L * S * R, K]
    shrink_tma_kernel[p.grid](
        TensorDescriptor(x, [x.shape[0], k], [x.stride(0), 1], [m["BM"], m["BK"]]),
        TensorDescriptor(a, list(a.shape), [k, 1], [m["BN"], m["BK"]]),
        *args, *p.cx, num_warps=p.num_warps, num_stages=p.num_stages,
    )


def _gluon_expand_ok(g: GluonExpandPlan, out, w) -> bool:
    """Whether the Gluon expand takes this call: ``out`` of the weights' dtype meets the TMA
    contract (16-byte base and row stride, unit column stride), ``B`` is contiguous, and
    (unless forced) the loaded ranks fall short of ``max_rank`` by little enough
    (:func:`_gluon_takes`) and the launch is cheap on the host (native tier, or inside
    CUDA-graph capture, as :func:`_pick`)."""
    if out.dtype is not w.dtype or not _tma_ready(out):
        return False
    if getattr(w, "__dict__", None) is None:  # a view inside torch.compile: any B
        b = w.lora_b
        if not b.is_contiguous() or b.data_ptr() % 16:
            return False
    if g.forced:
        return True
    if not gluon_native() and not (out.is_cuda and _capturing()):
        return False
    return _gluon_takes("expand", w, out.shape[0], g.cap)


def _b_desc(w, g: GluonExpandPlan):
    """Descriptor of ``B [L * N, R]`` for the Gluon expand plan ``g``: boxes of its
    ``block_n`` rows, ``g.cap`` (or ``R``) wide (kept on the weights object while its
    ``lora_b`` is the same tensor)."""
    b = w.lora_b
    d = getattr(w, "__dict__", None)
    key = (g.cfg.b_block or g.cfg.block_n, g.cap)
    if d is not None:
        memo = d.get("_gluon_b_desc")
        if memo is not None and memo[0] is b and memo[1] == key:
            return memo[2]
    desc = b_descriptor(b, key[0], g.cap or None)
    if d is not None:
        d["_gluon_b_desc"] = (b, key, desc)
    return desc


def _gluon_expand_fixed(g: GluonExpandPlan, y, w, batch, t: int, ys: tuple) -> tuple:
    """:mod:`.expand_gluon_kernel`'s parameters that do not depend on ``out``: those between
    ``out``'s descriptor and ``out``, and those between ``out`` and its row stride."""
    tm = batch.tile_map
    return ((_b_desc(w, g), y), (w.ranks, w.slice_bounds, batch.sorted_tokens, tm, t,
                                 w.num_slots, tm.shape[2], w.total_out, g.nb, *ys[:4]))


def _gluon_expand_args(g: GluonExpandPlan, y, w, batch, out, t: int, ys: tuple) -> tuple:
    """:mod:`.expand_gluon_kernel`'s parameters in signature order."""
    a, b = _gluon_expand_fixed(g, y, w, batch, t, ys)
    os0 = out.stride(0)
    return (out_descriptor(out, t, w.total_out, os0, g.tile), *a, out, *b, os0, *g.cx)


def _launch_expand(p: ExpandPlan, y, w, batch, out, t: int, ys: tuple | None = None) -> None:
    """The expand of plan ``p`` (the Gluon kernel where :func:`_gluon_expand_ok`); ``ys``:
    the four strides of ``y`` as ``[SPLIT, S, T, R]`` (default: those of a 4-d ``y``)."""
    ys = y.stride() if ys is None else ys
    g = p.gluon
    if g is not None and _gluon_expand_ok(g, out, w):
        expand_gluon_kernel[g.grid](*_gluon_expand_args(g, y, w, batch, out, t, ys))
        return
    expand_kernel[p.grid](
        *_expand_args(p, y, w, batch, out, out.stride(), t, ys),
        *p.cx, num_warps=p.num_warps, num_stages=p.num_stages,
    )


def shrink(x: torch.Tensor, w, batch, split_k: int | None = None) -> torch.Tensor:
    """Segmented shrink of every slice in one launch.

    Parameters
    ----------
    x : Tensor [T, K]
        Layer input (any strides), dtype of the weights.
    w : LoRAWeights or WeightsView
    batch : LoRABatch or BatchView

    split_k : int, optional
        Override the configured number of K splits (accumulated with float32 atomics).

    Returns
    -------
    Tensor [num_slices, T, max_rank] float32
        ``c[s, i] * x[t] @ A_i[s, :r]^T`` in ``[:, t, :r]``, zeros elsewhere.

    Notes
    -----
    One K split: the kernel writes every element (host-known batches). Several: eagerly up
    to :data:`configs.TICKET_MAX_TOKENS` tokens one launch whose splits order themselves on
    this stream's ticket words (:mod:`.shrink_ticket_kernel`), otherwise (and under
    CUDA-graph capture) a zero fill, then the splits' float32 atomics.
    """
    t = x.shape[0]
    r = w.max_rank
    n = w.num_slices * t * r
    y = torch.empty((w.num_slices, t, r), dtype=torch.float32, device=x.device)
    if not t:
        return y
    p = _pick(plan_for("shrink", w, t, None, split_k), x, w)
    ys = (0, t * r, r, 1)  # every split adds into y
    kind = _desc_kind(p, x, w)
    pub = split_k is None and p.alt is None and kind != 1
    tp = _ticket_plan(w, t, split_k, p)
    if tp is not None and not (x.is_cuda and _capturing()):
        # eagerly one launch, its K splits ordered on this stream's ticket words: 3.1-3.6 us
        # less host time a call than the fill's and the shrink's launches; replayed in a graph
        # it runs level with them (H100, shrink-ticket-shipped-...json), so graphs keep the
        # fill and need no ticket words of their own
        tk = _tickets(tp.words, x)
        args = _ticket_args(tp, x, x.stride(), w, batch, tk, y, t)
        if pub and _launch_pub(OP_SHRINK, "_TGROUP", tp, w, batch, x, t,
                               lambda: (*args, *tp.tail), _T_PUB, (tp.grid,),
                               (x, y, *x.stride()), _S_PUB_LAYOUT):
            return y
        if _TGROUP is None or not _TGROUP.available() or not _TGROUP((tp.grid,),
                                                                     (*args, *tp.tail)):
            shrink_ticket_kernel[tp.grid](*args, *tp.cx, num_warps=tp.num_warps,
                                          num_stages=tp.num_stages)
        return y
    if p.meta["FILL"]:
        # one K split: the kernel writes every element, zeros included, where the batch's
        # spare tiles reach every token without a slot below T: a batch whose slots the
        # host knows are in range and that routes no token past T (a device-filled one may
        # name slots >= num_slots, whose extra tiles push the spare ones past the grid)
        ms = batch.max_slot
        if ms is not None and ms < w.num_slots and batch.num_tokens <= t:
            if kind == 2:
                if not (pub and _pub_gluon_shrink(p, x, w, batch, y, t, ys)):
                    _launch_shrink(p, x, w, batch, y, t, ys)
                return y
            if not (pub and _launch_pub(
                    OP_SHRINK, "_SGROUP", p, w, batch, x, t,
                    lambda: (*_shrink_args(p, x, x.stride(), w, batch, y, t, ys), *p.tail),
                    _S_PUB, (p.grid,), (x, y, *x.stride()), _S_PUB_LAYOUT, True)):
                _launch_shrink(p, x, w, batch, y, t, ys)
            return y
        p = _pick(plan_for("shrink", w, t, "zero_fill", split_k), x, w)
        kind = _desc_kind(p, x, w)
        pub = False  # the fallback of a plan that writes its own zeros: not armed
    # the fill stays a plain launch before the shrink: started beside it through PDL (the
    # shrink waiting before its first store) it replayed 8% faster at T=1 but 3-4% slower at
    # T=16 and 64, 1-2% at T >= 256 (H200, 1 and 16 adapters, ab-shrink-fill-pdl-...json)
    zgrid = (_cdiv(n, ZERO_BLOCK),)
    if kind == 2 and pub and _pub_gluon_shrink(p, x, w, batch, y, t, ys, zgrid):
        return y
    if not kind and _ZGROUP is not None and _ZGROUP.available():
        slots = (y, n, *_ZERO_TAIL, *_shrink_args(p, x, x.stride(), w, batch, y, t, ys),
                 *p.tail)
        if pub and _launch_pub(OP_SHRINK, "_ZGROUP", p, w, batch, x, t, lambda: slots, _Z_PUB,
                               (zgrid, p.grid), (y, x, y, *x.stride()), _Z_PUB_LAYOUT):
            return y
        if _ZGROUP((zgrid, p.grid), slots):
            return y  # both launches in one native call
    zero_kernel[zgrid](y, n, ZERO_BLOCK, num_warps=_ZERO_WARPS, num_stages=1)
    _launch_shrink(p, x, w, batch, y, t, ys)
    return y


def expand(y: torch.Tensor, w, batch, base_out: torch.Tensor) -> None:
    """Segmented expand of every slice in one launch, added into ``base_out``.

    Parameters
    ----------
    y : Tensor [num_slices, T, max_rank]
        Shrink output (float32, or float16 / bfloat16), any strides.
    w : LoRAWeights or WeightsView
    batch : LoRABatch or BatchView
    base_out : Tensor [T, sum(out_features)]
        Updated in place (any strides, float16 / bfloat16 / float32); rows of tokens
        without an adapter are not touched.
    """
    t = base_out.shape[0]
    if not t:
        return
    p = plan_for("expand", w, t, cap=_cap(w, base_out))
    ys = (0, *y.stride())
    if y.dim() == 3:
        g = p.gluon
        if g is None:
            os_ = base_out.stride()
            if _launch_pub(OP_EXPAND, "_EGROUP", p, w, batch, y, t,
                           lambda: (*_expand_args(p, y, w, batch, base_out, os_, t, ys),
                                    *p.tail),
                           _E_PUB, (p.grid,), (y, base_out, *ys[1:], *os_), _E_PUB_LAYOUT):
                return
        elif _gluon_expand_ok(g, base_out, w) and _pub_gluon_expand(p, y, w, batch, base_out,
                                                                     t, ys):
            return
    _launch_expand(p, y, w, batch, base_out, t, ys)


def _ticket_plan(w, t: int, split_k: int | None, p: ShrinkPlan) -> TicketPlan | None:
    """The one-launch public shrink over plan ``p``'s tiling (cached beside it), or None where
    it is not taken: one K split, descriptors, or :func:`configs.shrink_ticket` says no."""
    plans = _plans(w)
    key = ("ticket", t, split_k)
    if key in plans:
        return plans[key]
    tp = None
    if (p.split > 1 and not p.tma and p.gluon is None and p.alt is None
            and configs.shrink_ticket(describe(w.device), t)):
        tp = ticket_plan(p, t)
    plans[key] = tp
    return tp


def ticket_plan(p: ShrinkPlan, t: int) -> TicketPlan:
    """:mod:`.shrink_ticket_kernel`'s launch over split-K shrink plan ``p`` for ``t`` tokens."""
    m = p.meta
    meta = dict(m, SW=SWEEP_ROWS)
    words = p.grid[0]  # nb * tiles
    cx = tuple(meta[n] for n in _TICKET_CX)
    opts = () if _TGROUP_OPTIONS is None else _TGROUP_OPTIONS(
        0, num_warps=m["num_warps"], num_stages=m["num_stages"])
    return TicketPlan((words + _cdiv(t, SWEEP_ROWS), p.split), words, cx, m["num_warps"],
                      m["num_stages"], cx + opts, p)


def _ticket_args(tp: TicketPlan, x, xs, w, batch, tk, y, t: int) -> tuple:
    """``shrink_ticket_kernel``'s parameters before its constexprs, in signature order
    (``y`` contiguous ``[S, T, R]``)."""
    p, tm, r = tp.base, batch.tile_map, w.max_rank
    return (x, w.lora_a, y, w.ranks, w.scalings, batch.sorted_tokens, tm, batch.token_slots,
            tk, t, w.in_features, w.num_slots, tm.shape[2], p.k_split, p.nb, tk.numel() // 2,
            xs[0], xs[1], t * r, r)  # ticket words, then their flags from tk.numel() // 2


# the public ops' bound groups: their varying slots (indices, in slot order) and what each is
_S_PUB = (_S_X, _S_Y, _S_XS.start, _S_XS.start + 1)  # x, y, x's strides
_T_PUB = (0, 2, 16, 17)  # the same in shrink_ticket_kernel's parameters
_S_PUB_LAYOUT = (V_X, V_Y, V_XS0, V_XS1)
_Z_PUB = (0, *(2 + len(_ZERO_TAIL) + i for i in _S_PUB))  # the fill's y, then the shrink's
_Z_PUB_LAYOUT = (V_Y, *_S_PUB_LAYOUT)
_E_PUB = (_E_Y, _E_OUT, *range(_E_YS.start, _E_YS.stop), *range(_E_OS.start, _E_OS.stop))
_E_PUB_LAYOUT = (V_Y, V_O, V_YS0, V_YS1, V_YS2, V_OS0, V_OS1)
# the same for the Gluon kernels: the shrink's x descriptor, x, y, x's strides (after the
# fill's y where the fill runs first); the expand's out descriptor, y, out, y's strides past
# the split one, out's row stride
_GS_PUB = (0, 2, 3, 13, 14)
_GS_PUB_LAYOUT = (V_XD, V_X, V_Y, V_XS0, V_XS1)
_GZ_PUB = (0, *(2 + len(_ZERO_TAIL) + i for i in _GS_PUB))
_GZ_PUB_LAYOUT = (V_Y, *_GS_PUB_LAYOUT)
_GE_PUB = (0, 2, 3, 14, 15, 16, 17)
_GE_PUB_LAYOUT = (V_OD, V_Y, V_O, V_YS0, V_YS1, V_YS2, V_OS0)


def _gluon_pub_slots(p: ShrinkPlan, w, batch, y, t: int, ys: tuple, fill: bool) -> tuple:
    """The public Gluon shrink's launch group slots (after the fill's where ``fill``), with
    None at its per-call positions (:data:`_GZ_PUB` / :data:`_GS_PUB`)."""
    g = p.gluon
    a, b = _gluon_fixed(g, p.k_split, w, batch, y, t, ys)
    body = (None, _a_desc(w, g.cfg), None, None, *a[1:], None, None, *b, *_GS_OPTS)
    return (None, w.num_slices * t * w.max_rank, *_ZERO_TAIL, *body) if fill else body


def _pub_gluon_shrink(p: ShrinkPlan, x, w, batch, y, t: int, ys: tuple,
                      zgrid: tuple | None = None) -> bool:
    """The public shrink's Gluon plan ``p`` through :data:`_GZGROUP` (the fill on ``zgrid``,
    then the split-K kernel) or :data:`_GSGROUP` (one split writing its own zeros) as
    :func:`_launch_pub` launches it, with ``x``'s descriptor encoded in C per call once armed;
    False where nothing was launched."""
    fill = zgrid is not None
    if (_GZGROUP if fill else _GSGROUP) is None:
        return False
    g, xs = p.gluon, x.stride()
    xd = rows_descriptor(x, t, w.in_features, xs[0], g.tile)
    if fill:
        return _launch_pub(OP_SHRINK, "_GZGROUP", p, w, batch, x, t,
                           lambda: _gluon_pub_slots(p, w, batch, y, t, ys, True), _GZ_PUB,
                           (zgrid, g.grid), (y, xd, x, y, *xs), _GZ_PUB_LAYOUT, kind=1,
                           xt=g.tile, xi=1)
    return _launch_pub(OP_SHRINK, "_GSGROUP", p, w, batch, x, t,
                       lambda: _gluon_pub_slots(p, w, batch, y, t, ys, False), _GS_PUB,
                       (g.grid,), (xd, x, y, *xs), _GS_PUB_LAYOUT, True, kind=1, xt=g.tile)


def _gluon_expand_pub_slots(p: ExpandPlan, w, batch, t: int, ys: tuple) -> tuple:
    """The public Gluon expand's launch group slots, with None at its per-call positions
    (:data:`_GE_PUB`)."""
    g = p.gluon
    (bd, _), b = _gluon_expand_fixed(g, None, w, batch, t, ys)
    return (None, bd, None, None, *b[:-3], None, None, None, None, *g.cx, *_GE_OPTS)


def _pub_gluon_expand(p: ExpandPlan, y, w, batch, out, t: int, ys: tuple) -> bool:
    """The public expand's Gluon plan through :data:`_GEGROUP` as :func:`_launch_pub`
    launches it, with ``out``'s descriptor encoded in C per call once armed; False where
    nothing was launched."""
    if _GEGROUP is None:
        return False
    g, os0 = p.gluon, out.stride(0)
    od = out_descriptor(out, t, w.total_out, os0, g.tile)
    return _launch_pub(OP_EXPAND, "_GEGROUP", p, w, batch, y, t,
                       lambda: _gluon_expand_pub_slots(p, w, batch, t, ys), _GE_PUB,
                       (g.grid,), (od, y, out, *ys[1:], os0), _GE_PUB_LAYOUT, kind=2,
                       ot=g.tile, base_out=out, oi=0)


def _launch_pub(op: int, name: str, p, w, batch, x, t: int, slots,
                varying: tuple, grids: tuple, values: tuple, layout: tuple,
                need_ms: bool = False, **desc) -> bool:
    """A public shrink / expand through launch group ``name`` bound to ``slots()`` (their
    ``varying`` ones per call: ``values``; built only where it binds), arming its native
    per-call path (:func:`_install_hot`); False (nothing launched) where it does not launch:
    the caller launches the usual way.

    The group is bound on the second consecutive Python-path call of plan ``p`` with the
    same weights (at the same version) and batch, on the GPU outside capture; the first one
    only records them (``w._fl_pub``), so calls alternating between batches never bind.
    ``x``: the call's ``x`` (shrink) or ``y`` (expand). ``desc``: :func:`_install_hot`'s
    descriptor arguments (``kind``, ``xt``, ``ot``, ``base_out``, ``xi``, ``oi``) where the
    group's kernels take descriptors of ``x`` or ``base_out``."""
    group = _G[name]
    d = getattr(w, "__dict__", None)
    if (group is None or d is None or x.get_device() < 0 or not group.available()
            or _hot_native() is None):
        return False
    memo = d.get("_fl_pub")
    if memo is None:
        memo = d["_fl_pub"] = {}
    key = (op, t)
    e = memo.get(key)
    if e is None or e[0]() is not batch or e[1] is not p or e[2] != w.version:
        memo[key] = (weakref.ref(batch), p, w.version)
        return False
    if _capturing():
        return False
    bound = group.bind(slots(), varying)
    if bound is None or not group.launch_bound(bound, grids, values):
        return False
    _install_hot([None], w, e[0], weakref.ref(w), name, group, bound, grids, x, op=op, slot=0,
                 t=t, layout=layout, need_ms=need_ms, **desc)
    return True


def add_lora_two_pass(base_out: torch.Tensor, x: torch.Tensor, w, batch,
                      split_k: int | None = None) -> None:
    """``add_lora`` as a split-K shrink into a workspace and an expand summing the splits."""
    t = x.shape[0]
    if t:
        _two_pass(plan_for("add", w, t, "two_pass", split_k), base_out, x, w, batch, t,
                  "two_pass", split_k)


def add_lora_fused(base_out: torch.Tensor, x: torch.Tensor, w, batch) -> None:
    """``add_lora`` as one fused launch (each program recomputes its tile's shrink)."""
    t = x.shape[0]
    if t:
        _fused(plan_for("add", w, t, "fused").fused, base_out, x, w, batch, t)


_WORKSPACES: dict[tuple[int, int, int], torch.Tensor] = {}
_SYNCS: dict[tuple[int, int, int], torch.Tensor] = {}
_TICKETS: dict[tuple[int, int, int], torch.Tensor] = {}
_WS_GEN = [0]  # bumped whenever a buffer of those tables is replaced or dropped
_get_ident = threading.get_ident
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", lambda: False)
_TORCH_CAPTURING = _capturing  # the native per-call path asks the driver instead
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _per_stream(table: dict, numel: int, x: torch.Tensor, dtype: torch.dtype,
                alloc) -> torch.Tensor:
    """A buffer of at least ``numel`` elements from ``alloc`` (``torch.empty`` /
    ``torch.zeros``), one grow-only buffer per (device, current stream, thread) in ``table``
    for eager GPU calls; a new one per call under CUDA-graph capture and off the GPU."""
    dev = x.get_device()
    if dev < 0 or _raw_stream is None or _capturing():
        return alloc(numel, dtype=dtype, device=x.device)
    key = (dev, _raw_stream(dev), _get_ident())
    buf = table.get(key)
    if buf is None or buf.numel() < numel:
        grown = numel if buf is None else max(numel, 2 * buf.numel())
        buf = table[key] = alloc(grown, dtype=dtype, device=x.device)
        _WS_GEN[0] += 1
    return buf


def _workspace(numel: int, x: torch.Tensor) -> torch.Tensor:
    """A float32 buffer of at least ``numel`` elements for the add_lora partial products.

    Eager GPU calls reuse one grow-only buffer per (device, current stream, thread): work
    on one stream runs in issue order, so the next call's shrink cannot overwrite a buffer
    an earlier expand still reads. Under CUDA-graph capture (and off the GPU) every call
    allocates, so each captured graph owns its workspace in its private pool.
    """
    return _per_stream(_WORKSPACES, numel, x, torch.float32, torch.empty)


def _sync(numel: int, x: torch.Tensor) -> torch.Tensor:
    """A zeroed int32 buffer of at least ``numel`` elements for :mod:`overlap_kernel`'s
    counters and flags, which the kernel zeroes again as it ends: kept per (device, stream,
    thread) like the workspace; under CUDA-graph capture a new one per call (in the graph, a
    memset node of ``4 * numel`` bytes)."""
    return _per_stream(_SYNCS, numel, x, torch.int32, torch.zeros)


def _tickets(words: int, x: torch.Tensor) -> torch.Tensor:
    """A zeroed-at-birth ``int32 [2 * n]`` buffer, ``n >= words``, of ticket words (then
    their flags) for :mod:`.shrink_ticket_kernel`, which leaves every word ready for its
    next launch: one per (device, stream, thread), so launches sharing one run in order."""
    return _per_stream(_TICKETS, 2 * words, x, torch.int32, torch.zeros)


def workspace_bytes() -> int:
    """Bytes held by the eager add_lora workspaces, overlap flag buffers and public shrink
    ticket buffers (one each per device, stream and thread)."""
    return sum(b.numel() * b.element_size()
               for b in (*_WORKSPACES.values(), *_SYNCS.values(), *_TICKETS.values()))


def release_workspaces() -> None:
    """Drop the eager add_lora workspaces, flag and ticket buffers (the caching allocator
    reuses their memory once the work queued on their streams is done)."""
    _WORKSPACES.clear()
    _SYNCS.clear()
    _TICKETS.clear()
    _WS_GEN[0] += 1


def _memo_hit(m: list, w, batch, ws) -> bool:
    return m[0] is not None and m[0]() is w and m[1]() is batch and m[2]() is ws


def _memoize(p: AddPlan, w, batch, ws, pieces: tuple) -> tuple:
    try:
        p.memo[:6] = (weakref.ref(w), weakref.ref(batch), weakref.ref(ws), pieces, None, None)
    except TypeError:  # the views torch.compile passes: no memo
        pass
    return pieces


def _group_pieces(p: AddPlan, w, batch, ws, t: int) -> tuple:
    """The launch-group slots that do not change between calls with the same weights,
    batch and workspace: everything but ``x``, ``base_out`` and their strides."""
    sp, ep = p.shrink, p.expand
    ys = p.ys
    sa = _shrink_args(sp, None, (None, None), w, batch, ws, t, ys)
    ea = _expand_args(ep, ws, w, batch, None, (None, None), t, ys)
    return _memoize(p, w, batch, ws, (
        sa[_S_X + 1:_S_XS.start],
        (*sa[_S_XS.stop:], *sp.tail, *ea[:_E_OUT]),
        ea[_E_OUT + 1:_E_OS.start],
        (*ea[_E_OS.stop:], *ep.tail),
    ))


def _group_slots(p: AddPlan, base_out, x, w, batch, ws, t: int) -> tuple:
    """Both kernels' launch-group slots: shrink args, constexprs and options, then the
    expand's (memoized per weights, batch and workspace, see ``_group_pieces``)."""
    m = p.memo
    a, b, c, d = m[3] if _memo_hit(m, w, batch, ws) else _group_pieces(p, w, batch, ws, t)
    xs = x.stride()
    os_ = base_out.stride()
    return (x, *a, xs[0], xs[1], *b, base_out, *c, os_[0], os_[1], *d)


def _gluon_group_pieces(p: AddPlan, w, batch, ws, t: int) -> tuple:
    """``_group_pieces`` for the Gluon shrink's group (:data:`_GGROUP`): everything but ``x``,
    its descriptor, ``base_out`` and their strides."""
    sp, ep = p.shrink, p.expand
    g = sp.gluon
    a, b = _gluon_fixed(g, sp.k_split, w, batch, ws, t, p.ys)
    ea = _expand_args(ep, ws, w, batch, None, (None, None), t, p.ys)
    return _memoize(p, w, batch, ws, (
        (w.in_features, g.tile), _a_desc(w, g.cfg), a, (*b, *_GGROUP_OPTS, *ea[:_E_OUT]),
        ea[_E_OUT + 1:_E_OS.start], (*ea[_E_OS.stop:], *ep.tail),
    ))


def _gluon_group_slots(p: AddPlan, base_out, x, w, batch, ws, t: int) -> tuple:
    """The Gluon shrink's then the expand's launch-group slots (the same parameters as
    ``_gluon_args`` and ``_expand_args``; memoized like ``_group_slots``)."""
    m = p.memo
    (k, tile), ad, a, b, c, d = (m[3] if _memo_hit(m, w, batch, ws)
                                 else _gluon_group_pieces(p, w, batch, ws, t))
    xs = x.stride()
    os_ = base_out.stride()
    return (rows_descriptor(x, t, k, xs[0], tile), ad, x, *a, xs[0], xs[1], *b, base_out, *c,
            os_[0], os_[1], *d)


_UNBOUND = object()  # memo[4]: the group's fixed slots are not keyed in C (launch unbound)


def _bound_slots(p: AddPlan, gluon: bool) -> tuple[tuple, tuple]:
    """The memoized group slots of ``p`` with None at the per-call ones (``x`` and its
    descriptor, ``base_out``, their strides), and those positions: what ``_group_slots`` /
    ``_gluon_group_slots`` build, for ``LaunchGroup.bind``."""
    a, b, c, d = p.memo[3][-4:]
    if gluon:
        ad = p.memo[3][1]
        slots = (None, ad, None, *a, None, None, *b, None, *c, None, None, *d)
        i = 3 + len(a)
        head = (0, 2)
    else:
        slots = (None, *a, None, None, *b, None, *c, None, None, *d)
        i = 1 + len(a)
        head = (0,)
    j = i + 2 + len(b)
    return slots, (*head, i, i + 1, j, j + 1 + len(c), j + 2 + len(c))


def _bound(group, p: AddPlan, gluon: bool):
    """``memo[4]``: the launch group bound to the memoized slots (``LaunchGroup.bind``: their
    keys computed once), bound on first use; None where it cannot be bound.

    The memoized tensors are the weights', the batch's and the workspace's, which keep
    their storage for the life of those objects (a static batch refills in place), so their
    addresses can be keyed once.
    """
    m = p.memo
    b = m[4]
    if b is None:
        b = m[4] = group.bind(*_bound_slots(p, gluon)) or _UNBOUND
    return None if b is _UNBOUND else b


def _launch_bound(group, p: AddPlan, grids: tuple, values: tuple, gluon: bool) -> bool:
    """Launch the group through its bound slots (:func:`_bound`); False (nothing launched,
    the binding dropped so the next call binds again) where it does not launch."""
    b = _bound(group, p, gluon)
    if b is None:
        return False
    if group.launch_bound(b, grids, values):
        return True
    p.memo[4] = p.memo[5] = None
    return False


_V = tuple(object() for _ in range(7))  # the Gluon-expand group's per-call slots


def _xgroup_slots(p: AddPlan, group, w, batch, ws, t: int) -> tuple[tuple, tuple]:
    """The slots of ``group`` (:data:`_XGROUP` or :data:`_GXGROUP`: ``p``'s shrink, then its
    Gluon expand) for :meth:`LaunchGroup.bind`: None at the per-call ones, and their
    positions. Those are ``x``'s descriptor (Gluon shrink only), ``x``, its two strides,
    ``base_out``'s descriptor, ``base_out`` and its row stride, in that order."""
    sp, g, ys = p.shrink, p.expand.gluon, p.ys
    if sp.gluon is not None:
        a, b = _gluon_fixed(sp.gluon, sp.k_split, w, batch, ws, t, ys)
        shrink = (_V[0], _a_desc(w, sp.gluon.cfg), _V[1], *a, _V[2], _V[3], *b,
                  *group.options(0))
    else:
        shrink = (*_shrink_args(sp, _V[1], _V[2:4], w, batch, ws, t, ys), *sp.tail)
    e0, e1 = _gluon_expand_fixed(g, ws, w, batch, t, ys)
    slots = (*shrink, _V[4], *e0, _V[5], *e1, _V[6], *g.cx, *group.options(1))
    varying = tuple(i for i, v in enumerate(slots) if any(v is u for u in _V))
    return tuple(None if i in varying else v for i, v in enumerate(slots)), varying


def _xgroup_entry(p: AddPlan, group, w, batch, ws, t: int) -> tuple | None:
    """``memo[6]``: ``(weights, batch, workspace weak refs, group, bound)`` with ``group``
    bound to :func:`_xgroup_slots` (``_UNBOUND`` where it cannot be), memoized like
    :func:`_group_pieces`; None for the views inside ``torch.compile``."""
    m = p.memo
    e = m[6]
    if (e is not None and e[0]() is w and e[1]() is batch and e[2]() is ws
            and e[3] is group):
        return e
    try:
        refs = (weakref.ref(w), weakref.ref(batch), weakref.ref(ws))
    except TypeError:
        return None
    e = m[6] = (*refs, group, group.bind(*_xgroup_slots(p, group, w, batch, ws, t))
                or _UNBOUND)
    return e


def _launch_xgroup(p: AddPlan, base_out, x, w, batch, ws, t: int,
                   entry: AddPlan | None = None) -> bool:
    """``p``'s shrink (pointer or Gluon) then its Gluon expand as one bound launch group
    (prefill ``add_lora``: ``x``'s and ``base_out``'s descriptors and their tensors are the
    only per-call slots); False (nothing launched) where the group cannot take the call:
    the TMA shrink, no native tier (yet: the separate launches compile the variants), the
    views inside ``torch.compile``. After a launch, ``entry`` (the plan :func:`add_lora`
    looks up) gets the per-call path (:func:`_arm_hot_desc`)."""
    sp, g = p.shrink, p.expand.gluon
    gluon = sp.gluon is not None  # a Gluon shrink plan comes only from _pick, which checked x
    if not gluon and sp.tma and _tma_ready(x):
        return False
    group = _GXGROUP if gluon else _XGROUP
    if group is None or not group.available():
        return False
    e = _xgroup_entry(p, group, w, batch, ws, t)
    if e is None or e[4] is _UNBOUND:
        return False
    xs = x.stride()
    os0 = base_out.stride(0)
    od = out_descriptor(base_out, t, w.total_out, os0, g.tile)
    if gluon:
        gs = sp.gluon
        ok = group.launch_bound(e[4], (gs.grid, g.grid), (
            rows_descriptor(x, t, w.in_features, xs[0], gs.tile), x, xs[0], xs[1], od,
            base_out, os0))
    else:
        ok = group.launch_bound(e[4], (sp.grid, g.grid),
                                (x, xs[0], xs[1], od, base_out, os0))
    if not ok:
        p.memo[6] = None  # bind again next call
    elif entry is not None:
        _arm_hot_desc(p, "_GXGROUP" if gluon else "_XGROUP", e[4], x, ws, w, entry, base_out)
    return ok


def _hot_native():
    """The native module where it loads (None: no per-call path)."""
    try:
        return _native.load()
    except _native.NativeUnavailable:
        return None


_HOT_TABLES = ("_fl_hot", "_fl_hot_s", "_fl_hot_e")  # w's per-T tables of the public entries
_HOT_ENTRIES = ("_hot_add", "_hot_shrink", "_hot_expand")  # their names in ops


def _install_hot(em: list, w, batch_ref, w_ref, name: str, group, bound, grids: tuple, x,
                 kind: int = 0, xt=None, ot=None, on_decline=None, base_out=None, *,
                 op: int = OP_ADD, slot: int = 5, t: int | None = None,
                 layout: tuple | None = None, need_ms: bool = False, xi: int = 0,
                 oi: int = 1) -> None:
    """``em[slot]``: a native per-call path (``launchers/hot.c``) repeating ``group``'s
    launch ``bound`` (:meth:`LaunchGroup.bind`) for the call's tensors, on this device,
    current stream and thread, at the current workspace generation; where ``w``'s backend
    selection is this backend, the public op ``op`` takes it too (``w._fl_hot[t]`` is ``em``
    for ``add_lora``, ``w._fl_hot_s[t]`` / ``w._fl_hot_e[t]`` for ``lora_shrink`` /
    ``lora_expand``). Not armed (``em`` untouched) where ``group`` has no native pieces for
    ``bound`` on ``x``'s device and current stream.

    ``x``: the call's input (``add_lora``, ``lora_shrink``) or ``y`` (``lora_expand``), for
    its device; ``t``: the row count (default ``x``'s). ``layout``: the group's varying
    slots as ``V_*`` codes (default: ``add_lora``'s for ``kind``). Where the launch is
    native, the descriptors of ``x`` (``kind & 1``) and of ``base_out`` (``kind & 2``,
    given) are passed as raw fields set in C per call (``fl_raw_desc``), not built in
    Python; ``xi`` / ``oi``: the group's kernels that take them (their native tables).
    ``need_ms``: the call needs ``batch.max_slot`` known (a shrink writing its own zeros)."""
    mod = _hot_native()
    pieces = None if mod is None or bound is None or bound is _UNBOUND else group.hot(bound)
    dev = x.get_device()
    if pieces is None or pieces[4] != dev:
        return
    ready, launch, tables, stream_of, _ = pieces
    stream = stream_of(dev)
    if _raw_stream is None or _raw_stream(dev) != stream:
        return
    t = x.shape[0] if t is None else t
    xraw = oraw = None
    if kind and launch is mod.fl_launch_bound:
        if kind & 1:
            xraw = mod.fl_raw_desc(tables[xi], rows_descriptor(x, t, w.in_features,
                                                               x.stride(0), xt))
        if kind & 2 and base_out is not None:
            oraw = mod.fl_raw_desc(tables[oi], out_descriptor(base_out, t, w.total_out,
                                                              base_out.stride(0), ot))
    d = getattr(w, "__dict__", None)
    sel = None if d is None else d.get("_selection")
    fn = (add_lora, shrink, expand)[op]
    if (sel is None or sel[0] != _registry.generation
            or getattr(sel[1].impl, fn.__name__, None) is not fn):
        sel = None
    if on_decline is None:
        def on_decline() -> None:
            em[slot] = None
    ydtype = x.dtype if op == OP_EXPAND else torch.float32
    spec = {
        "op": op, "wref": w_ref, "bref": batch_ref, "ver": w.version, "sel": sel,
        "reg": vars(_registry), "gdict": _G, "gname": name, "group": group,
        "gen_list": _WS_GEN, "gen": _WS_GEN[0], "ident": _get_ident(), "ready": ready,
        "stream_of": stream_of,
        "capturing": None if _capturing is _TORCH_CAPTURING else _capturing,
        "stream_obj": stream, "dev_obj": dev, "device": w.device,
        "tensor_type": torch.Tensor, "w_type": type(w), "b_type": type(batch_ref()),
        "num_slots": w.num_slots, "s": w.num_slices, "r": w.max_rank, "need_ms": need_ms,
        "isz": w.dtype.itemsize, "dtype": w.dtype, "out_dtypes": tuple(SUPPORTED_DTYPES),
        "ydtype": ydtype, "alloc": torch.empty, "yshape": (w.num_slices, t, w.max_rank),
        "launch": launch, "bound": bound, "tables": tables, "grids": grids,
        "kind": kind, "layout": bytes(_ADD_LAYOUTS[kind] if layout is None else layout),
        "xdesc": rows_descriptor, "xtile": xt, "odesc": out_descriptor,
        "otile": ot, "xraw": xraw, "oraw": oraw, "t_obj": t, "k_obj": w.in_features,
        "n_obj": w.total_out,
        "on_decline": on_decline,
    }
    em[slot] = mod.fl_hot(spec)
    if d is not None and sel is not None:
        d.setdefault(_HOT_TABLES[op], {})[t] = em
        from lora_dispatch import ops

        setattr(ops, _HOT_ENTRIES[op], getattr(mod, ("fl_hot_add", "fl_hot_shrink",
                                                     "fl_hot_expand")[op]))


def _arm_hot(p: AddPlan, group, x, ws, w, entry: AddPlan) -> None:
    """``entry.memo[5]``: the plain two-pass group's per-call path, armed after a bound
    launch of ``p``. ``entry`` is the plan :func:`add_lora` looks up; ``p`` is that plan or
    the one :func:`_two_pass` took for the loaded ranks (:func:`_cap`).

    The path (a native ``Hot``, ``launchers/hot.c``) repeats that launch for ``x`` /
    ``base_out`` where the call is one the public op's validation passes, with the same
    weights (at the same :attr:`version`: same loaded ranks) and batch (the memoized ones),
    on the same device, stream and thread with no workspace replaced since (so the memoized
    workspace is the one :func:`_workspace` returns), outside CUDA-graph capture, while
    ``group`` is ``_GROUP`` and passes its guards (:meth:`LaunchGroup.hot`). It returns
    False, having launched nothing, where any of that fails; where the native call declines
    it also drops itself and the binding. Only plans whose launch does not depend on ``x``
    beyond its strides take it: no Gluon or TMA alternative.
    """
    m = p.memo
    em = entry.memo
    em[5] = None
    sp = p.shrink
    if p.alt is not None or p.expand.gluon is not None or sp.gluon is not None or sp.tma:
        return
    if m[2]() is not ws:
        return

    def on_decline() -> None:
        m[4] = em[5] = None

    _install_hot(em, w, m[1], m[0], "_GROUP", group, m[4], (sp.grid, p.expand.grid), x,
                 on_decline=on_decline)


_HOT_GROUPS = ("_GGROUP", "_GXGROUP", "_XGROUP")  # the descriptor plans' launch groups
_G = globals()


def _arm_hot_desc(p: AddPlan, name: str, bound, x, ws, w, entry: AddPlan,
                  base_out=None) -> None:
    """``entry.memo[5]``: the per-call path of a prefill two-pass plan whose launch takes
    descriptors, armed after a bound launch of ``p`` through group ``name`` (one of
    :data:`_HOT_GROUPS`: the Gluon shrink with the pointer expand, the Gluon shrink with the
    Gluon expand, the pointer shrink with the Gluon expand).

    It holds where :func:`_arm_hot`'s path holds (same weights at the same version, batch,
    device, stream, thread and workspace generation, no capture, the group in place and
    passing its guards), and, as those choices depend on the call's tensors: ``x`` meets
    the TMA contract where the Gluon shrink runs, ``base_out`` of the weights' dtype meets
    it where the Gluon expand runs. ``x``'s and ``base_out``'s descriptors are built per
    call. Not armed where the shrink's kernel would depend on ``x`` otherwise (a pointer
    plan with a Gluon alternative or a TMA shrink) or the expand's on ``base_out`` (a
    Gluon expand plan the call did not take).
    """
    em = entry.memo
    em[5] = None
    group = _G[name]
    sp, ep = p.shrink, p.expand
    gs, ge = sp.gluon, (ep.gluon if name != "_GGROUP" else None)
    if (gs is None and (p.alt is not None or sp.tma)) or (name == "_GGROUP"
                                                          and ep.gluon is not None):
        return
    m = p.memo
    if name == "_GGROUP":
        if m[2]() is not ws:
            return
        wref, bref = m[0], m[1]
    else:
        e = m[6]
        if e is None or e[2]() is not ws:
            return
        wref, bref = e[0], e[1]
    grids = (sp.grid if gs is None else gs.grid, ep.grid if ge is None else ge.grid)
    slot = 4 if name == "_GGROUP" else 6

    def on_decline() -> None:
        m[slot] = em[5] = None

    _install_hot(em, w, bref, wref, name, group, bound, grids, x,
                 kind=(gs is not None) | (ge is not None) << 1,
                 xt=None if gs is None else gs.tile, ot=None if ge is None else ge.tile,
                 on_decline=on_decline, base_out=base_out)


def _two_pass(p: AddPlan, base_out, x, w, batch, t: int, mode: str | None = None,
              split_k: int | None = None) -> None:
    """``p`` (``plan_for("add", w, t, mode, split_k)``), or for an eager call over loaded
    ranks below ``max_rank`` its plan for their box (:func:`_cap`), with the Gluon shrink
    where :func:`_pick` takes it."""
    entry = p
    cap = _cap(w, x)
    if cap:
        p = plan_for("add", w, t, mode, split_k, cap)
    if p.alt is not None:
        p = _pick(p, x, w)
    sp = p.shrink
    ws = _workspace(p.ws_numel, x)
    g = p.expand.gluon
    if g is not None and _gluon_expand_ok(g, base_out, w):  # prefill
        if not _launch_xgroup(p, base_out, x, w, batch, ws, t, entry):
            _launch_shrink(sp, x, w, batch, ws, t, p.ys)
            expand_gluon_kernel[g.grid](*_gluon_expand_args(g, ws, w, batch, base_out, t,
                                                            p.ys))
        return
    # a Gluon shrink plan comes only from _pick, which checked x
    kind = 2 if sp.gluon is not None else _desc_kind(sp, x, w)
    if not kind and _GROUP is not None and _GROUP.available():
        grids = (sp.grid, p.expand.grid)
        if _memo_hit(p.memo, w, batch, ws):
            xs = x.stride()
            os_ = base_out.stride()
            if _launch_bound(_GROUP, p, grids, (x, xs[0], xs[1], base_out, os_[0], os_[1]),
                             False):
                _arm_hot(p, _GROUP, x, ws, w, entry)  # this device, stream, thread
                return  # both launches in one native call, fixed slots keyed once
        if _GROUP(grids, _group_slots(p, base_out, x, w, batch, ws, t)):
            return  # both launches in one native call
    elif kind == 2 and _GGROUP is not None and _GGROUP.available():
        grids = (sp.gluon.grid, p.expand.grid)
        m = p.memo
        if _memo_hit(m, w, batch, ws):
            xs = x.stride()
            os_ = base_out.stride()
            (k, tile) = m[3][0]
            if _launch_bound(_GGROUP, p, grids,
                             (rows_descriptor(x, t, k, xs[0], tile), x, xs[0], xs[1], base_out,
                              os_[0], os_[1]), True):
                _arm_hot_desc(p, "_GGROUP", m[4], x, ws, w, entry, base_out)
                return
        if _GGROUP(grids, _gluon_group_slots(p, base_out, x, w, batch, ws, t)):
            return  # both launches in one native call
    _launch_shrink(sp, x, w, batch, ws, t, p.ys)
    _launch_expand(p.expand, ws, w, batch, base_out, t, p.ys)


def _overlap(p: AddPlan, base_out, x, w, batch, t: int) -> None:
    op = p.overlap
    ws = _workspace(p.ws_numel, x)
    tm = batch.tile_map
    overlap_kernel[op.grid](
        x, w.lora_a, ws, w.lora_b, base_out, w.ranks, w.scalings, w.slice_bounds,
        batch.sorted_tokens, tm, _sync(SYNC_HEAD + op.ntile, x),
        t, w.in_features, w.num_slots, tm.shape[2], w.total_out, op.ntile, op.nbs, op.nbe,
        op.lag, op.k_split, x.stride(0), x.stride(1), *p.ys, base_out.stride(0),
        base_out.stride(1), *op.cx, num_warps=op.num_warps, num_stages=op.num_stages,
    )


def add_lora_overlap(base_out: torch.Tensor, x: torch.Tensor, w, batch,
                     cfg: configs.OverlapConfig | None = None) -> None:
    """``add_lora`` as one launch whose expand programs start on each token tile as soon
    as that tile's shrink programs are done (:mod:`overlap_kernel`).

    ``cfg`` overrides the registry's :func:`~lora_dispatch.devices.configs.overlap_config`.
    """
    t = x.shape[0]
    if not t:
        return
    if cfg is None:
        p = plan_for("add", w, t, "overlap")
    else:
        p = _overlap_plan(w, t, cfg)
    _overlap(p, base_out, x, w, batch, t)


def _fused(p: ExpandPlan, base_out, x, w, batch, t: int) -> None:
    tm = batch.tile_map
    fused_kernel[p.grid](
        x, w.lora_a, w.lora_b, base_out, w.ranks, w.scalings, w.slice_bounds,
        batch.sorted_tokens, tm,
        t, w.in_features, w.num_slots, tm.shape[2], w.total_out, p.nb,
        x.stride(0), x.stride(1), base_out.stride(0), base_out.stride(1),
        **p.meta,
    )


def add_lora(base_out: torch.Tensor, x: torch.Tensor, w, batch) -> None:
    """``base_out += expand(shrink(x))`` for every slice.

    Small decode batches (``T <= fused_max_tokens``) take one fused launch; otherwise a
    split-K shrink writes per-split partial products to a workspace (no zero fill, no
    atomics) and the expand sums them while reading.

    Parameters
    ----------
    base_out : Tensor [T, sum(out_features)]
        Updated in place.
    x : Tensor [T, K]
    w : LoRAWeights or WeightsView
    batch : LoRABatch or BatchView
    """
    t = x.shape[0]
    if not t:
        return
    p = _plans(w).get(("add", t, None, None))
    if p is None:
        p = plan_for("add", w, t)
    hot = p.memo[5]
    if hot is not None and hot(base_out, x, w, batch):
        return  # both launches in one native call, every check of _two_pass's at once
    if p.fused is not None:
        _fused(p.fused, base_out, x, w, batch, t)
    else:  # add_lora's own plans are fused or two-pass (add_lora_overlap launches its own)
        _two_pass(p, base_out, x, w, batch, t)
