"""Public multi-LoRA ops: validation, backend dispatch, ``torch.library`` registration.

Eager calls validate on the host and call the selected backend directly (no dispatcher).
Inside ``torch.compile`` the same functions route through the ``lora_dispatch::*`` custom
ops, whose fake implementations let ``fullgraph=True`` trace without a graph break.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import backends as _backends  # noqa: F401  (registers the built-in backends)
from .batch import LoRABatch
from .devices import info as _info
from .devices import registry as _registry
from .weights import SUPPORTED_DTYPES, LoRAWeights

__all__ = ["add_lora", "lora_shrink", "lora_expand", "selection"]


# --------------------------------------------------------------------------- selection
def selection(w: LoRAWeights) -> _registry.Selection:
    """The backend selection for weights ``w`` (cached on ``w`` until ``devices.reset()``)."""
    cached = w.__dict__.get("_selection")
    if cached is not None and cached[0] == _registry.generation:
        return cached[1]
    sel = _registry.select(_info.describe(w.device), w.dtype, w.max_rank, w.num_slices)
    w._selection = (_registry.generation, sel)
    return sel


def _impl(w: LoRAWeights):
    cached = w.__dict__.get("_selection")
    if cached is not None and cached[0] == _registry.generation:
        return cached[1].impl
    return selection(w).impl


# --------------------------------------------------------------------------- validation
def _check_objects(w: object, batch: object) -> None:
    if not isinstance(w, LoRAWeights):
        raise TypeError(f"w must be a LoRAWeights, got {type(w).__name__}")
    if not isinstance(batch, LoRABatch):
        raise TypeError(f"batch must be a LoRABatch, got {type(batch).__name__}")
    if batch.device != w.device:
        raise ValueError(f"batch is on {batch.device} but the weights are on {w.device}")


def _check_tensor(name: str, t: object, w: LoRAWeights, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != w.device:
        raise ValueError(f"{name} is on {t.device} but the weights are on {w.device}")


def _check_x(x: object, w: LoRAWeights) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != w.in_features:
        raise ValueError(f"x must be [T, in_features={w.in_features}], got {list(x.shape)}")
    if x.dtype != w.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the weights have {w.dtype}")
    if x.device != w.device:
        raise ValueError(f"x is on {x.device} but the weights are on {w.device}")
    return x.shape[0]


def _check_batch_tokens(batch: LoRABatch, w: LoRAWeights, t: int) -> None:
    if batch.capacity < t:
        raise ValueError(f"batch holds {batch.capacity} tokens but x has {t} rows")
    if batch.num_tokens > t:
        raise ValueError(f"batch routes {batch.num_tokens} tokens but x has only {t} rows")
    if batch.max_slot is not None and batch.max_slot >= w.num_slots:
        raise ValueError(
            f"batch uses slot {batch.max_slot} but the weights have {w.num_slots} slots"
        )


def _check_base_out(base_out: object, w: LoRAWeights, t: int) -> None:
    _check_tensor("base_out", base_out, w, (t, w.total_out))
    if base_out.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"base_out must be one of {SUPPORTED_DTYPES}, got {base_out.dtype}")


_is_compiling = torch.compiler.is_compiling
_Tensor = torch.Tensor
# the Triton backend's per-call paths in C (launchers/hot.c), each set when it first arms
# one: add_lora(base_out, x, w, batch) -> bool and lora_expand(y, w, batch, base_out) -> bool
# (True: launched), lora_shrink(x, w, batch) -> y, or False (the Python path takes the call)
_hot_add = None
_hot_shrink = None
_hot_expand = None


def _fast_ok(base_out: object, x: object, w: object, batch: object) -> bool:
    """Every check of :func:`add_lora` at once, for the common valid call (no messages).

    ``False`` sends the call through the detailed validators, which raise the error.
    """
    if type(x) is not _Tensor or type(base_out) is not _Tensor:
        return False
    if type(w) is not LoRAWeights or type(batch) is not LoRABatch:
        return False
    xs = x.shape
    if len(xs) != 2:
        return False
    t, k = xs
    dev = w.device
    ms = batch.max_slot
    return (
        k == w.in_features
        and x.dtype is w.dtype
        and base_out.shape == (t, w.total_out)
        and base_out.dtype in SUPPORTED_DTYPES
        and x.device == dev
        and base_out.device == dev
        and batch.device == dev
        and batch.num_tokens <= t <= batch.capacity
        and (ms is None or ms < w.num_slots)
        and t > 0
    )


def _validate(x: object, w: object, batch: object, compiling: bool) -> int:
    _check_objects(w, batch)
    t = _check_x(x, w)
    if not compiling:  # host batch state would become guards under torch.compile
        _check_batch_tokens(batch, w, t)
    elif batch.capacity < t:
        raise ValueError(f"batch holds {batch.capacity} tokens but x has {t} rows")
    return t


# --------------------------------------------------------------------------- public ops
def add_lora(
    base_out: torch.Tensor, x: torch.Tensor, w: LoRAWeights, batch: LoRABatch
) -> torch.Tensor:
    """Add each token's LoRA delta into ``base_out`` in place.

    ``base_out[t, off_i:off_i+out_i] += c[s, i] * (x[t] @ A_i[s, :r_s]^T) @ B_i[s, :, :r_s]^T``
    for every token ``t`` with slot ``s != -1`` and every slice ``i``.

    Parameters
    ----------
    base_out : Tensor [T, sum(out_features)]
        The layer's base output (float16 / bfloat16 / float32), updated in place.
    x : Tensor [T, in_features]
        The layer's input, dtype of the weights.
    w : LoRAWeights
    batch : LoRABatch
        Routing of the step's tokens (capacity >= T).

    Returns
    -------
    Tensor
        ``base_out``.
    """
    if _is_compiling():
        t = _validate(x, w, batch, True)
        _check_base_out(base_out, w, t)
        torch.ops.lora_dispatch.add_lora(base_out, x, *_weight_args(w), *_batch_args(batch))
    elif _hot_add is not None and _hot_add(base_out, x, w, batch):
        pass
    elif _fast_ok(base_out, x, w, batch):
        _impl(w).add_lora(base_out, x, w, batch)
    else:
        t = _validate(x, w, batch, False)
        _check_base_out(base_out, w, t)
        if t:
            _impl(w).add_lora(base_out, x, w, batch)
    return base_out


def lora_shrink(x: torch.Tensor, w: LoRAWeights, batch: LoRABatch) -> torch.Tensor:
    """Shrink step: ``y[i, t, :r_s] = c[s, i] * x[t] @ A_i[s, :r_s]^T``.

    Parameters
    ----------
    x : Tensor [T, in_features]
    w : LoRAWeights
    batch : LoRABatch

    Returns
    -------
    Tensor [num_slices, T, max_rank] float32
        Zero for tokens without an adapter and past each slot's rank.
    """
    compiling = _is_compiling()
    if not compiling and _hot_shrink is not None:
        y = _hot_shrink(x, w, batch)
        if y is not False:
            return y
    t = _validate(x, w, batch, compiling)
    if compiling:
        return torch.ops.lora_dispatch.lora_shrink(x, *_weight_args(w), *_batch_args(batch))
    if not t:
        return torch.zeros(w.num_slices, 0, w.max_rank, dtype=torch.float32, device=w.device)
    return _impl(w).shrink(x, w, batch)


def lora_expand(
    y: torch.Tensor, w: LoRAWeights, batch: LoRABatch, base_out: torch.Tensor
) -> torch.Tensor:
    """Expand step: ``base_out[t, off_i:off_i+out_i] += y[i, t, :r_s] @ B_i[s, :, :r_s]^T``.

    Parameters
    ----------
    y : Tensor [num_slices, T, max_rank]
        Usually the output of :func:`lora_shrink` (float32; float16/bfloat16 accepted).
    w : LoRAWeights
    batch : LoRABatch
    base_out : Tensor [T, sum(out_features)], updated in place

    Returns
    -------
    Tensor
        ``base_out``.
    """
    compiling = _is_compiling()
    if not compiling and _hot_expand is not None and _hot_expand(y, w, batch, base_out):
        return base_out
    t = _validate_expand(y, w, batch, base_out, compiling)
    if not compiling:
        if t:
            _impl(w).expand(y, w, batch, base_out)
    else:
        torch.ops.lora_dispatch.lora_expand(y, base_out, *_weight_args(w), *_batch_args(batch))
    return base_out


def _validate_expand(y: object, w: object, batch: object, base_out: object,
                     compiling: bool) -> int:
    """:func:`lora_expand`'s checks (raising its errors); returns T."""
    _check_objects(w, batch)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a Tensor, got {type(y).__name__}")
    if y.dim() != 3 or y.shape[0] != w.num_slices or y.shape[2] != w.max_rank:
        raise ValueError(
            f"y must be [num_slices={w.num_slices}, T, max_rank={w.max_rank}], got {list(y.shape)}"
        )
    if y.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"y must be floating point (float32 preferred), got {y.dtype}")
    t = y.shape[1]
    _check_tensor("y", y, w, tuple(y.shape))
    _check_base_out(base_out, w, t)
    if not compiling:
        _check_batch_tokens(batch, w, t)
    return t


# --------------------------------------------------------------------------- custom ops
class WeightsView(NamedTuple):
    """The tensor state of a :class:`LoRAWeights`, rebuilt inside the custom ops."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    ranks: torch.Tensor
    scalings: torch.Tensor
    slice_bounds: torch.Tensor
    out_features: tuple[int, ...]
    slice_offsets: tuple[int, ...]
    num_slices: int
    num_slots: int
    max_rank: int
    in_features: int
    total_out: int
    dtype: torch.dtype
    device: torch.device
    host_ranks: None = None


class BatchView(NamedTuple):
    """The tensor state of a :class:`LoRABatch`, rebuilt inside the custom ops."""

    token_slots: torch.Tensor
    sorted_tokens: torch.Tensor
    tile_map: torch.Tensor
    capacity: int
    num_tokens: int
    is_static: bool = True
    host_segments: None = None
    max_slot: None = None


def _weight_args(w: LoRAWeights) -> tuple:
    """``(weight tensors, out_features)`` as the custom ops take them."""
    return [w.lora_a, w.lora_b, w.ranks, w.scalings, w.slice_bounds], list(w.out_features)


def _batch_args(batch: LoRABatch) -> tuple:
    """``(batch tensors,)`` as the custom ops take them."""
    return ([batch.token_slots, batch.sorted_tokens, batch.tile_map],)


def _views(
    weights: list[torch.Tensor], out_features: list[int], batch: list[torch.Tensor]
) -> tuple[WeightsView, BatchView]:
    lora_a, lora_b, ranks, scalings, slice_bounds = weights
    offsets, acc = [], 0
    for o in out_features:
        offsets.append(acc)
        acc += o
    wv = WeightsView(
        lora_a, lora_b, ranks, scalings, slice_bounds, tuple(out_features), tuple(offsets),
        len(out_features), lora_a.shape[0], lora_b.shape[2], lora_a.shape[2], acc,
        lora_a.dtype, lora_a.device,
    )  # fmt: skip
    cap = batch[0].shape[0]
    return wv, BatchView(*batch, cap, cap)


def _view_impl(wv: WeightsView):
    return _registry.select(_info.describe(wv.device), wv.dtype, wv.max_rank, wv.num_slices).impl


# weights = [lora_a, lora_b, ranks, scalings, slice_bounds]; batch = [token_slots,
# sorted_tokens, tile_map]: the tensor state of LoRAWeights / LoRABatch (see _weight_args).
@torch.library.custom_op("lora_dispatch::add_lora", mutates_args=("base_out",))
def _add_lora_op(
    base_out: torch.Tensor, x: torch.Tensor, weights: list[torch.Tensor],
    out_features: list[int], batch: list[torch.Tensor],
) -> None:  # fmt: skip
    wv, bv = _views(weights, out_features, batch)
    if x.shape[0]:
        _view_impl(wv).add_lora(base_out, x, wv, bv)


@_add_lora_op.register_fake
def _(base_out, x, weights, out_features, batch) -> None:
    return None


@torch.library.custom_op("lora_dispatch::lora_shrink", mutates_args=())
def _shrink_op(
    x: torch.Tensor, weights: list[torch.Tensor], out_features: list[int],
    batch: list[torch.Tensor],
) -> torch.Tensor:  # fmt: skip
    wv, bv = _views(weights, out_features, batch)
    if not x.shape[0]:
        return torch.zeros(wv.num_slices, 0, wv.max_rank, dtype=torch.float32, device=x.device)
    return _view_impl(wv).shrink(x, wv, bv)


@_shrink_op.register_fake
def _(x, weights, out_features, batch):
    return x.new_empty((len(out_features), x.shape[0], weights[1].shape[2]), dtype=torch.float32)


@torch.library.custom_op("lora_dispatch::lora_expand", mutates_args=("base_out",))
def _expand_op(
    y: torch.Tensor, base_out: torch.Tensor, weights: list[torch.Tensor],
    out_features: list[int], batch: list[torch.Tensor],
) -> None:  # fmt: skip
    wv, bv = _views(weights, out_features, batch)
    if y.shape[1]:
        _view_impl(wv).expand(y, wv, bv, base_out)


@_expand_op.register_fake
def _(y, base_out, weights, out_features, batch) -> None:
    return None
