"""Static-shape backend for XLA devices (TPU through ``torch_xla``).

XLA compiles one executable per distinct graph: any change of a shape, or of a host value
baked into the graph, recompiles. This module therefore builds a graph that depends only on

- the token count ``T`` (``x.shape[0]``) and the batch's capacity,
- the weights' static geometry (``num_slots``, ``in_features``, ``out_features``,
  ``max_rank``, dtype),

and never on the batch's contents, the slots' ranks or scalings: it reads only
``batch.token_slots[:T]`` and the weights' device tensors (``lora_a``, ``lora_b``, ``ranks``,
``scalings``), never ``w.host_ranks`` or ``batch.host_segments``, never reads device data on
the host, and uses no data-dependent shapes (no boolean indexing, ``nonzero``, ``unique``).
Loading an adapter of another rank, or routing tokens differently, replays the same graph.

Two formulations, same results (float32 accumulation):

``bgmv`` (gather)
    Each token gathers its own adapter: ``A[slot_t]`` ``[T, S*R, K]`` and ``B[slot_t]``
    ``[T, N, R]``, then batched mat-vecs. Work and traffic are ``T * W`` weight elements,
    ``W = R * (S*K + N)`` per slot. Best when few tokens (decode).
``masked`` (dense over all slots)
    One GEMM of ``x`` against every slot's A stacked ``[L*S*R, K]``, each token then picks
    its slot's columns; expand multiplies a one-hot-by-slot ``[T, L*R]`` activation with the
    stacked B. Reads each slot's weights once (``L * W``) but spends ``T * L * W``
    multiply-adds. Best for many tokens (prefill), where the gather would move far more
    bytes than the dense GEMM costs on a matrix unit.

:func:`choose` picks one from a cost model of ``T``, ``num_slots``, ``K``, ``N``, ``R`` and
the slice count (constants per platform; the CPU ones are fitted to
``benchmarks/bench_xla_cpu.py``, see ``docs/xla.md``). The choice is a Python branch on
static shapes only, so each ``T`` still maps to exactly one graph. Force one with
:data:`FORMULATION` (``"bgmv"`` / ``"masked"``) or ``LORA_DISPATCH_XLA_FORMULATION``.

Static shapes mean compute is padded to ``max_rank`` (a slot's real rank ``r`` masks the
columns ``>= r``; the padded rows of A and columns of B are zero by the weights' layout):
rank-proportional compute would need rank-dependent shapes, i.e. a recompile per rank mix.

Slice ``i`` of a slot of rank ``r`` lives in rows ``[i*r, (i+1)*r)`` of ``lora_a``; the
columns of the shrink product are therefore gathered with device-side index math
``i * r_t + k`` (clamped, masked by ``k < r_t``). Tokens with slot ``-1`` (or out of range)
use slot 0 clamped and are masked out; rows of ``base_out`` of tokens without an active
adapter (slot ``-1``, empty slot) are written back through ``torch.where`` and so stay
bitwise unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = [
    "shrink",
    "expand",
    "add_lora",
    "choose",
    "CostModel",
    "COST_MODELS",
    "FORMULATIONS",
    "FORMULATION",
    "ENV_FORMULATION",
]

FORMULATIONS: tuple[str, ...] = ("bgmv", "masked")
ENV_FORMULATION = "LORA_DISPATCH_XLA_FORMULATION"
#: Force a formulation (``"bgmv"`` / ``"masked"``); ``None`` = :func:`choose` (or the env var).
FORMULATION: str | None = None


# --------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class CostModel:
    """Relative cost per weight element of each formulation on one platform.

    ``bgmv``  ~ ``gather * T * W``
    ``masked`` ~ ``read * L * W + mac * T * L * W``

    with ``W = R * (S*K + N)`` the weight elements of one slot. Only ratios matter.

    Attributes
    ----------
    gather : float
        Gathering one weight element for one token and using it once (memory bound).
    read : float
        Reading one weight element once in a dense GEMM.
    mac : float
        One multiply-add of a dense GEMM.
    """

    gather: float
    read: float
    mac: float

    def bgmv(self, t: int, num_slots: int, w: int) -> float:
        return self.gather * t * w

    def masked(self, t: int, num_slots: int, w: int) -> float:
        return self.read * num_slots * w + self.mac * t * num_slots * w

    def threshold(self, num_slots: int) -> float:
        """Token count above which ``masked`` is cheaper (``inf``: never)."""
        margin = self.gather - self.mac * num_slots
        if margin <= 0:
            return float("inf")
        return self.read * num_slots / margin


#: Per platform. ``cpu`` (eager PyTorch, the backend forced on the CPU) is fitted to
#: ``benchmarks/results/xla-cpu-*.json``, ``xla-cpu`` (torch_xla's PJRT CPU client) to
#: ``benchmarks/results/xla-cpu-pjrt-*.json``. ``tpu`` is derived from public figures (HBM
#: ~0.8-1.6 TB/s, MXU ~200-900 TFLOP/s bf16): a gathered element costs about what a read one
#: does (XLA fuses the gather into the dot), a multiply-add ~1/300 of that. Not measured.
COST_MODELS: dict[str, CostModel] = {
    "cpu": CostModel(gather=1.0, read=0.5, mac=0.025),
    "xla-cpu": CostModel(gather=1.0, read=4.0, mac=0.04),
    "tpu": CostModel(gather=1.0, read=1.0, mac=1.0 / 300),
}


_PLATFORMS: dict[torch.device, str] = {}


def _platform_of(device: torch.device) -> str:
    """Cost-model key of ``device``: ``tpu`` for an accelerator behind XLA, ``xla-cpu`` for
    the PJRT CPU client, ``cpu`` for eager PyTorch on the CPU (the backend forced there)."""
    if device.type != "xla":
        return "cpu"  # no cache write: stays constant when torch.compile traces this code
    key = _PLATFORMS.get(device)
    if key is None:
        key = "tpu"
        try:
            from ..devices.info import describe

            info = describe(device)
            if info.arch.lower() == "cpu" or info.name.startswith("XLA CPU"):
                key = "xla-cpu"
        except Exception:  # pragma: no cover - defensive
            pass
        _PLATFORMS[device] = key
    return key


def choose(
    t: int, num_slots: int, in_features: int, total_out: int, max_rank: int,
    num_slices: int = 1, platform: str = "cpu",
) -> str:
    """Formulation for a call with ``t`` tokens: ``"bgmv"`` or ``"masked"``.

    Parameters
    ----------
    t : int
        Token count (static: one graph per value).
    num_slots, in_features, total_out, max_rank, num_slices : int
        Weights geometry (``L``, ``K``, ``N``, ``R``, ``S``).
    platform : str
        Key of :data:`COST_MODELS` (``cpu``, ``tpu``).
    """
    forced = FORMULATION if FORMULATION is not None else os.environ.get(ENV_FORMULATION) or None
    if forced is not None:
        if forced not in FORMULATIONS:
            raise ValueError(
                f"XLA formulation must be one of {FORMULATIONS}, got {forced!r} "
                f"(lora_dispatch.kernels.xla.FORMULATION / {ENV_FORMULATION})"
            )
        return forced
    model = COST_MODELS.get(platform, COST_MODELS["cpu"])
    w = max_rank * (num_slices * in_features + total_out)
    return "bgmv" if model.bgmv(t, num_slots, w) <= model.masked(t, num_slots, w) else "masked"


def _choose_for(t: int, w) -> str:
    return choose(t, w.num_slots, w.in_features, w.total_out, w.max_rank, w.num_slices,
                  _platform_of(w.lora_a.device))


# --------------------------------------------------------------------------- routing
class _Route:
    """Per-token routing, all device tensors of static shape ``[T]`` / ``[T, ...]``."""

    __slots__ = ("idx", "rank", "active", "cols", "keep", "scale")

    def __init__(self, w, batch, t: int, device: torch.device) -> None:
        s, rmax, nslots = w.num_slices, w.max_rank, w.num_slots
        slots = batch.token_slots[:t].to(torch.int64)  # [T]
        valid = (slots >= 0) & (slots < nslots)
        idx = torch.where(valid, slots, torch.zeros_like(slots))  # [T] clamped slot
        rank = torch.where(valid, w.ranks.to(torch.int64)[idx], torch.zeros_like(slots))  # [T]
        self.idx = idx
        self.rank = rank
        self.active = rank > 0  # [T]: tokens whose rows change
        k = torch.arange(rmax, device=device, dtype=torch.int64)  # [R]
        i = torch.arange(s, device=device, dtype=torch.int64)  # [S]
        # column of slice i, rank position k in the packed [S*R] shrink product
        cols = i.view(1, s, 1) * rank.view(t, 1, 1) + k.view(1, 1, rmax)  # [T, S, R]
        self.cols = cols.clamp(max=s * rmax - 1)
        self.keep = k.view(1, rmax) < rank.view(t, 1)  # [T, R]
        scale = w.scalings[idx] * self.active.view(t, 1).to(torch.float32)  # [T, S]
        self.scale = scale


def _finish_y(full: torch.Tensor, route: _Route, s: int, rmax: int) -> torch.Tensor:
    """Packed shrink product ``full [T, S*R]`` (this token's slot) -> ``y [S, T, R]``."""
    t = full.shape[0]
    y = torch.gather(full, 1, route.cols.view(t, s * rmax)).view(t, s, rmax)  # [T, S, R]
    y = torch.where(route.keep.view(t, 1, rmax), y, torch.zeros_like(y))
    y = y * route.scale.view(t, s, 1)
    return y.permute(1, 0, 2)  # [S, T, R]


# --------------------------------------------------------------------------- shrink
def _shrink_bgmv(x: torch.Tensor, w, route: _Route) -> torch.Tensor:
    a = w.lora_a.index_select(0, route.idx)  # [T, S*R, K]
    full = torch.bmm(a.float(), x.float().unsqueeze(2)).squeeze(2)  # [T, S*R]
    return _finish_y(full, route, w.num_slices, w.max_rank)


def _shrink_masked(x: torch.Tensor, w, route: _Route) -> torch.Tensor:
    t = x.shape[0]
    s, rmax, nslots = w.num_slices, w.max_rank, w.num_slots
    a = w.lora_a.reshape(nslots * s * rmax, w.in_features)  # [L*S*R, K]
    full_all = x.float() @ a.float().T  # [T, L*S*R]
    cols = route.cols.view(t, s * rmax) + route.idx.view(t, 1) * (s * rmax)  # [T, S*R]
    full = torch.gather(full_all, 1, cols)  # [T, S*R]
    # cols already point at this token's slot: finish with an identity column map
    y = full.view(t, s, rmax)
    y = torch.where(route.keep.view(t, 1, rmax), y, torch.zeros_like(y))
    y = y * route.scale.view(t, s, 1)
    return y.permute(1, 0, 2)


# --------------------------------------------------------------------------- expand
def _delta_bgmv(y: torch.Tensor, w, route: _Route) -> torch.Tensor:
    """``delta [T, N]`` float32 for ``y [S, T, R]`` (float32, masked)."""
    b = w.lora_b.index_select(0, route.idx)  # [T, N, R]
    parts = []
    for i, (off, width) in enumerate(zip(w.slice_offsets, w.out_features)):
        bi = b[:, off : off + width].float()  # [T, out_i, R]
        parts.append(torch.bmm(bi, y[i].unsqueeze(2)).squeeze(2))  # [T, out_i]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _delta_masked(y: torch.Tensor, w, route: _Route) -> torch.Tensor:
    t = y.shape[1]
    nslots, rmax = w.num_slots, w.max_rank
    onehot = (route.idx.view(t, 1) == torch.arange(nslots, device=y.device).view(1, nslots))
    onehot = onehot.to(torch.float32).view(t, nslots, 1)  # [T, L, 1]
    parts = []
    for i, (off, width) in enumerate(zip(w.slice_offsets, w.out_features)):
        yi = (onehot * y[i].view(t, 1, rmax)).reshape(t, nslots * rmax)  # [T, L*R]
        bi = w.lora_b[:, off : off + width].float()  # [L, out_i, R]
        bi = bi.permute(0, 2, 1).reshape(nslots * rmax, width)  # [L*R, out_i]
        parts.append(yi @ bi)  # [T, out_i]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _apply(base_out: torch.Tensor, delta: torch.Tensor, route: _Route) -> None:
    t = base_out.shape[0]
    new = (base_out.float() + delta).to(base_out.dtype)
    base_out.copy_(torch.where(route.active.view(t, 1), new, base_out))


def _mask_y(y: torch.Tensor, route: _Route, s: int, t: int, rmax: int) -> torch.Tensor:
    """Zero ``y [S, T, R]`` past each token's rank and for inactive tokens."""
    keep = (route.keep & route.active.view(t, 1)).view(1, t, rmax)
    y = y.float()
    return torch.where(keep, y, torch.zeros_like(y))


# --------------------------------------------------------------------------- backend API
def shrink(x: torch.Tensor, w, batch) -> torch.Tensor:
    """``y[i, t, :r] = c[s, i] * x[t] @ A_i[s, :r]^T`` for ``s = slot(t)``; zeros elsewhere.

    Parameters
    ----------
    x : Tensor [T, K]

    Returns
    -------
    Tensor [num_slices, T, max_rank] float32
    """
    t = x.shape[0]
    route = _Route(w, batch, t, x.device)
    if _choose_for(t, w) == "bgmv":
        return _shrink_bgmv(x, w, route).contiguous()
    return _shrink_masked(x, w, route).contiguous()


def expand(y: torch.Tensor, w, batch, base_out: torch.Tensor) -> None:
    """``base_out[t, off_i:off_i+out_i] += y[i, t, :r] @ B_i[s, :, :r]^T`` for ``s = slot(t)``.

    Parameters
    ----------
    y : Tensor [num_slices, T, max_rank]
    base_out : Tensor [T, sum(out_features)], updated in place (rows of tokens without an
        active adapter are left bitwise unchanged)
    """
    t = base_out.shape[0]
    route = _Route(w, batch, t, base_out.device)
    ym = _mask_y(y, route, w.num_slices, t, w.max_rank)
    if _choose_for(t, w) == "bgmv":
        delta = _delta_bgmv(ym, w, route)
    else:
        delta = _delta_masked(ym, w, route)
    _apply(base_out, delta, route)


def add_lora(base_out: torch.Tensor, x: torch.Tensor, w, batch) -> None:
    """``base_out += expand(shrink(x))`` in one graph (the routing is computed once)."""
    t = x.shape[0]
    route = _Route(w, batch, t, x.device)
    if _choose_for(t, w) == "bgmv":
        y = _shrink_bgmv(x, w, route)
        delta = _delta_bgmv(y, w, route)
    else:
        y = _shrink_masked(x, w, route)
        delta = _delta_masked(y, w, route)
    _apply(base_out, delta, route)
