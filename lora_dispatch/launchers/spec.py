"""Code generation for the specialisation key.

For every parameter of a ``@triton.jit`` function this module emits one Python expression
whose value is that parameter's part of the fast-launch key. The expressions are meant to be
pasted into a generated function that has the kernel's exact parameter list, so they refer
to the parameters by name and to a few helpers bound in the generated code's globals.

Per parameter (``S`` = specialised, i.e. not in ``do_not_specialize``; ``A`` = specialised on
alignment, i.e. not in ``do_not_specialize_on_alignment``):

============================  ==============================================================
argument                      key part (CUDA backend)
============================  ==============================================================
``torch.Tensor`` (exactly)    ``t.dtype`` if aligned (or not S or not A), else
                              ``(t.dtype, "misaligned")`` (one object per dtype, memoised)
``int`` in int32 range, != 1  ``not n & 15`` if S and A, else ``True``
``int`` in int32 range, any   ``True`` if not S (1 is not special then)
``float``                     the marker ``"<float>"``
``None``                      ``None``
anything else                 Triton's own specialisation of the argument (exact, slower)
constexpr parameter           the value (3.5+), ``repr`` of non-int values (3.0-3.4)
annotated parameter           Triton's own specialisation minus the type (or nothing)
============================  ==============================================================

The branches of one parameter cannot produce equal values (tuples starting with a
``torch.dtype``, bools, dtypes, the float marker, ``None`` and Triton's tuples / strings are
pairwise unequal), so the key part is a function of Triton's equivalence class and a
refinement of it at worst. On backends other than CUDA tensors and ints always take the
exact path (HIP adds buffer-range bits to pointer keys).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from .versions import Adapter

__all__ = ["FLOAT_MARK", "KeyPlan", "ParamInfo", "plan_key"]

#: Key part of every Python float argument (Triton types them all as fp32, unspecialised).
FLOAT_MARK = "<float>"

class _Misaligned(dict):
    """``dtype -> (dtype, "misaligned")``: the key part of a tensor whose pointer is not a
    multiple of 16 (aligned tensors use the bare dtype: no tuple to build or hash)."""

    def __missing__(self, dtype: Any) -> tuple:
        value = self[dtype] = (dtype, "misaligned")
        return value


_MISALIGNED = _Misaligned()

_I32_MIN = -(2**31)
_I32_MAX = 2**31 - 1


@dataclass
class ParamInfo:
    """One kernel parameter as the code generator sees it."""

    name: str
    index: int
    is_constexpr: bool
    annotated: bool
    specialize: bool
    align: bool
    has_default: bool
    default: Any
    kind: str = "generic"  # generic | constexpr | annotated | constant


@dataclass
class KeyPlan:
    """Key expressions for every parameter plus the helpers they need.

    Attributes
    ----------
    params : list of ParamInfo
        All parameters, in order.
    parts : list of str
        One expression per parameter that contributes to the key (constant ones omitted).
    namespace : dict
        Helpers referenced by ``parts`` (``_fl_T``, ``_fl_sk3``, ...).
    """

    params: list[ParamInfo]
    parts: list[str]
    namespace: dict[str, Any] = field(default_factory=dict)


def _param_infos(jit: Any, adapter: Adapter) -> list[ParamInfo]:
    import inspect

    out = []
    for kp in jit.params:
        p = kp._param if hasattr(kp, "_param") else None
        has_default = bool(p is not None and p.default is not inspect.Parameter.empty)
        align = True
        if adapter.has_align_flag:
            align = not getattr(kp, "do_not_specialize_on_alignment", False)
        ann = "" if kp.is_constexpr else kp.annotation_type
        info = ParamInfo(
            name=kp.name,
            index=kp.num,
            is_constexpr=bool(kp.is_constexpr),
            annotated=bool(ann),
            specialize=not kp.do_not_specialize,
            align=align,
            has_default=has_default,
            default=p.default if has_default else None,
        )
        info.kind = "constexpr" if info.is_constexpr else "annotated" if ann else "generic"
        out.append(info)
    return out


def _generic_expr(p: ParamInfo, sk: str, inline_tensor: bool, inline_int: bool) -> str:
    n = p.name
    chain: list[tuple[str, str]] = []  # (value, condition)
    if inline_tensor:
        if p.specialize and p.align:
            tval = f"({n}.dtype if not {n}.data_ptr() & 15 else _fl_MIS[{n}.dtype])"
        else:
            tval = f"{n}.dtype"
        tensor = (tval, f"{n}.__class__ is _fl_T")
    if inline_int:
        rng = f"{_I32_MIN} <= {n} <= {_I32_MAX}"
        if p.specialize:
            cond = f"{n}.__class__ is int and {rng} and {n} != 1"
            ival = f"(not {n} & 15)" if p.align else "True"
        else:
            cond = f"{n}.__class__ is int and {rng}"
            ival = "True"
        integer = (ival, cond)
    int_first = isinstance(p.default, int) and not isinstance(p.default, bool)
    if inline_tensor and inline_int:
        chain += [integer, tensor] if int_first else [tensor, integer]
    elif inline_tensor:
        chain.append(tensor)
    elif inline_int:
        chain.append(integer)
    chain.append(("None", f"{n} is None"))
    chain.append(("_fl_FLOAT", f"{n}.__class__ is float"))
    expr = f"{sk}({n})"
    for value, cond in reversed(chain):
        expr = f"{value} if {cond} else ({expr})"
    return f"({expr})"


def plan_key(jit: Any, adapter: Adapter, backend: Any, inline: bool = True) -> KeyPlan:
    """Build the key expressions of a JIT function for one Triton release and backend.

    Parameters
    ----------
    jit : triton.runtime.JITFunction
        The kernel (its ``params`` are Triton's own parameter descriptions).
    adapter : Adapter
        The Triton release.
    backend : object
        Backend object passed to Triton's specialisation helpers on the exact path.
    inline : bool
        Inline tensor and int handling (valid for the CUDA backend); False routes them
        through Triton's helpers.

    Returns
    -------
    KeyPlan
    """
    import torch

    infos = _param_infos(jit, adapter)
    ns: dict[str, Any] = {"_fl_T": torch.Tensor, "_fl_FLOAT": FLOAT_MARK, "_fl_repr": repr,
                          "_fl_MIS": _MISALIGNED}
    parts: list[str] = []
    by_num = {kp.num: kp for kp in jit.params}
    for p in infos:
        kp = by_num[p.index]
        if p.kind == "constexpr":
            if adapter.constexpr_by_repr:
                parts.append(f"({p.name} if {p.name}.__class__ is int else _fl_repr({p.name}))")
            else:
                parts.append(p.name)
        elif p.kind == "annotated":
            fn: Callable[[Any], Hashable] | None = adapter.annotated_spec(kp, backend)
            if fn is None:
                p.kind = "constant"
                continue
            ns[f"_fl_sk{p.index}"] = fn
            parts.append(f"_fl_sk{p.index}({p.name})")
        else:
            sk = f"_fl_sk{p.index}"
            ns[sk] = adapter.generic_spec(kp, backend)
            parts.append(_generic_expr(p, sk, inline_tensor=inline, inline_int=inline))
    return KeyPlan(params=infos, parts=parts, namespace=ns)
