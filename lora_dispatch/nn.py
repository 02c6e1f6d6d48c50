"""``torch.nn`` integration: multi-LoRA linear layers and a patcher for Llama-style models.

:func:`patch_model` replaces the projections of a Hugging Face Llama-style model (``q_proj``,
``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``) with
:class:`LoRALinear` layers that add each token's adapter delta through :func:`add_lora`.
Sibling q/k/v and gate/up projections are fused (one base GEMM and one LoRA launch for the
group, a :class:`LoRAWeights` with 3 or 2 slices); the model code still calls ``q_proj(x)``,
``k_proj(x)``, ``v_proj(x)``: the first call computes the whole group, the others take their
slice of it.

::

    handle = patch_model(model, num_slots=8, max_rank=64)
    handle.load_adapter("path/to/peft_adapter", slot=0)
    with handle.adapters([0, -1, 0, 1]):        # one slot per sequence of input_ids [4, S]
        logits = model(input_ids).logits
    with handle.batch(LoRABatch.from_segments(seq_lens, seq_slots)):  # packed [1, sum(S)]
        ...

Inference only: no gradient flows through the LoRA delta. Patch the model after moving it to
its device and dtype (the LoRA weights are allocated like the base weights).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .batch import LoRABatch
from .ops import add_lora
from .peft import PeftAdapterInfo, load_peft_adapter
from .weights import SUPPORTED_DTYPES, LoRAWeights

__all__ = ["LoRAContext", "LoRALinear", "LoRASlice", "LoRAModel", "patch_model",
           "LLAMA_TARGET_MODULES"]

LLAMA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj")
_FUSE_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_FUSED_NAME = {("q_proj", "k_proj", "v_proj"): "qkv_proj", ("gate_proj", "up_proj"): "gate_up_proj"}


def _version(x: torch.Tensor) -> int:
    """In-place version counter of ``x`` (inference tensors have none: -1)."""
    try:
        return x._version
    except RuntimeError:
        return -1


class LoRAContext:
    """The current step's routing, shared by every :class:`LoRALinear` of a model.

    Either an explicit :class:`LoRABatch` (token order = rows of the flattened layer input),
    or one slot per sequence, from which a batch is built (once per input shape) for inputs
    shaped ``[num_sequences, seq_len, features]``. Neither set: layers add no LoRA.
    """

    def __init__(self) -> None:
        self._batch: LoRABatch | None = None
        self._seq_slots: list[int] | None = None
        self._built: dict[tuple, LoRABatch] = {}

    def set_batch(self, batch: LoRABatch | None) -> None:
        if batch is not None and not isinstance(batch, LoRABatch):
            raise TypeError(f"batch must be a LoRABatch or None, got {type(batch).__name__}")
        self._batch = batch
        self._seq_slots = None
        self._built.clear()

    def set_sequence_adapters(self, seq_slots: Sequence[int] | torch.Tensor | None) -> None:
        if seq_slots is None:
            self._seq_slots = None
        else:
            slots = seq_slots.tolist() if isinstance(seq_slots, torch.Tensor) else list(seq_slots)
            for s in slots:
                if isinstance(s, bool) or not isinstance(s, int) or s < -1:
                    raise ValueError(f"seq_slots must be slot ids or -1, got {s!r}")
            self._seq_slots = slots
        self._batch = None
        self._built.clear()

    @property
    def active(self) -> bool:
        return self._batch is not None or self._seq_slots is not None

    def batch_for(self, x: torch.Tensor) -> LoRABatch | None:
        """The batch routing the rows of ``x`` (``[..., features]``), or ``None``."""
        if self._batch is not None:
            return self._batch
        if self._seq_slots is None:
            return None
        key = (tuple(x.shape[:-1]), x.device)
        b = self._built.get(key)
        if b is None:
            if x.dim() != 3 or x.shape[0] != len(self._seq_slots):
                raise ValueError(
                    f"per-sequence adapters ({len(self._seq_slots)} sequences) need layer inputs "
                    f"[{len(self._seq_slots)}, seq_len, features], got {list(x.shape)}; "
                    "use set_batch(LoRABatch.from_segments(...)) for packed inputs"
                )
            n, s = x.shape[0], x.shape[1]
            b = LoRABatch.from_segments([s] * n, self._seq_slots, device=x.device)
            if len(self._built) >= 16:  # e.g. a long generate() loop with varying shapes
                self._built.clear()
            self._built[key] = b
        return b


class LoRALinear(nn.Module):
    """A linear layer (possibly several fused along the output) plus multi-LoRA deltas.

    ``forward(x) = F.linear(x, weight, bias)`` + each token's LoRA delta from ``lora`` routed
    by ``context``'s current batch.

    Parameters
    ----------
    weight : Tensor [sum(out_features), in_features]
    bias : Tensor [sum(out_features)] or None
    out_features : sequence of int
        Widths of the fused slices (one entry for a plain linear layer).
    lora : LoRAWeights
        ``in_features`` and ``out_features`` must match.
    context : LoRAContext
    module_names : sequence of str, optional
        The PEFT module name of each slice (used by :meth:`LoRAModel.load_adapter`).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 out_features: Sequence[int], lora: LoRAWeights, context: LoRAContext,
                 module_names: Sequence[str] | None = None) -> None:
        super().__init__()
        out_features = tuple(int(o) for o in out_features)
        if weight.dim() != 2 or weight.shape[0] != sum(out_features):
            raise ValueError(f"weight must be [sum(out_features)={sum(out_features)}, in], "
                             f"got {list(weight.shape)}")
        if lora.in_features != weight.shape[1] or lora.out_features != out_features:
            raise ValueError(
                f"lora is [{lora.in_features} -> {lora.out_features}] but the layer is "
                f"[{weight.shape[1]} -> {out_features}]"
            )
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(
            weight, requires_grad=False)
        if bias is not None and not isinstance(bias, nn.Parameter):
            bias = nn.Parameter(bias, requires_grad=False)
        self.register_parameter("bias", bias)
        self.in_features = weight.shape[1]
        self.out_features = sum(out_features)
        self.slice_features = out_features
        self.lora = lora
        self.context = context
        self.module_names = list(module_names) if module_names is not None else None
        offs = [0]
        for o in out_features:
            offs.append(offs[-1] + o)
        self._offsets = offs
        self._pending_x: torch.Tensor | None = None
        self._pending: dict[int, torch.Tensor] = {}
        self._pending_version = -1

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if self.weight.device != self.lora.device:  # model.to(device) / .cuda() / .cpu()
            self.lora.to(self.weight.device)
        return out

    @classmethod
    def from_linear(
        cls, linears: nn.Linear | Sequence[nn.Linear], num_slots: int, max_rank: int,
        context: LoRAContext | None = None, module_names: Sequence[str] | None = None,
        lora_dtype: torch.dtype | None = None,
    ) -> LoRALinear:
        """Wrap one ``nn.Linear`` or fuse several with the same input (in output order)."""
        if isinstance(linears, nn.Linear):
            linears = [linears]
        linears = list(linears)
        if not linears or not all(isinstance(m, nn.Linear) for m in linears):
            raise TypeError("linears must be an nn.Linear or a non-empty list of them")
        k = linears[0].in_features
        if any(m.in_features != k for m in linears):
            raise ValueError("fused linears must share in_features")
        w0 = linears[0].weight
        if len(linears) == 1:
            weight, bias = linears[0].weight, linears[0].bias
        else:
            with torch.no_grad():
                weight = torch.cat([m.weight for m in linears], 0)
                if all(m.bias is None for m in linears):
                    bias = None
                else:
                    bias = torch.cat([
                        m.bias if m.bias is not None else
                        torch.zeros(m.out_features, dtype=w0.dtype, device=w0.device)
                        for m in linears
                    ])
        dtype = lora_dtype or (w0.dtype if w0.dtype in SUPPORTED_DTYPES else torch.float32)
        outs = [m.out_features for m in linears]
        lora = LoRAWeights(num_slots, k, outs, max_rank, dtype=dtype, device=w0.device)
        return cls(weight, bias, outs, lora, context or LoRAContext(), module_names)

    # ----------------------------------------------------------------- compute
    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        batch = self.context.batch_for(x)
        if batch is not None:
            x2 = x.reshape(-1, self.in_features)
            if x2.dtype != self.lora.dtype:
                x2 = x2.to(self.lora.dtype)
            if not x2.is_contiguous():
                x2 = x2.contiguous()
            y2 = y.view(-1, self.out_features)
            with torch.no_grad():
                add_lora(y2, x2, self.lora, batch)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compute(x)

    def slice_forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Output slice ``index`` for input ``x``: computes the whole fused layer on the first
        call for ``x`` and serves the other slices from that result (same ``x`` object,
        unmodified) until each has been taken once.

        Under ``torch.compile`` the identity/version cache cannot be traced: each slice call
        computes the fused layer and takes its slice (correct, but the q/k/v GEMM runs once
        per slice; compile with ``patch_model(..., fuse=False)`` to avoid that)."""
        if torch.compiler.is_compiling():
            return self._compute(x)[..., self._offsets[index]:self._offsets[index + 1]]
        if (self._pending_x is x and index in self._pending
                and self._pending_version == _version(x)):
            out = self._pending.pop(index)
            if not self._pending:
                self._pending_x = None
            return out
        y = self._compute(x)
        parts = {i: y[..., self._offsets[i]:self._offsets[i + 1]]
                 for i in range(len(self.slice_features))}
        out = parts.pop(index)
        self._pending = parts
        self._pending_x = x if parts else None
        self._pending_version = _version(x)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.slice_features}, "
                f"bias={self.bias is not None}, lora_slots={self.lora.num_slots}, "
                f"max_rank={self.lora.max_rank}")


class LoRASlice(nn.Module):
    """Stands in for one projection of a fused :class:`LoRALinear` (e.g. ``k_proj``)."""

    def __init__(self, group: LoRALinear, index: int) -> None:
        super().__init__()
        self.__dict__["group"] = group  # not a submodule: the group is registered once
        self.index = index
        self.in_features = group.in_features
        self.out_features = group.slice_features[index]

    @property
    def weight(self) -> torch.Tensor:
        g = self.group
        return g.weight[g._offsets[self.index]:g._offsets[self.index + 1]]

    @property
    def bias(self) -> torch.Tensor | None:
        g = self.group
        if g.bias is None:
            return None
        return g.bias[g._offsets[self.index]:g._offsets[self.index + 1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.slice_forward(self.index, x)

    def extra_repr(self) -> str:
        return f"slice {self.index} of a fused LoRALinear, out_features={self.out_features}"


class LoRAModel:
    """Handle returned by :func:`patch_model`.

    Attributes
    ----------
    model : nn.Module
        The patched model (patched in place).
    layers : dict[str, LoRALinear]
        The LoRA-enabled layers by qualified name (fused ones named ``...qkv_proj`` /
        ``...gate_up_proj``).
    context : LoRAContext
    """

    def __init__(self, model: nn.Module, layers: dict[str, LoRALinear], context: LoRAContext,
                 num_slots: int, max_rank: int) -> None:
        self.model = model
        self.layers = layers
        self.context = context
        self.num_slots = num_slots
        self.max_rank = max_rank

    def targets(self) -> dict[str, tuple[LoRAWeights, list[str]]]:
        """``targets`` for :func:`~lora_dispatch.load_peft_adapter`."""
        return {name: (m.lora, list(m.module_names)) for name, m in self.layers.items()}

    def load_adapter(self, adapter: str | os.PathLike | tuple, slot: int, *,
                     adapter_name: str | None = None, strict: bool = True) -> PeftAdapterInfo:
        """Load a PEFT adapter (directory or ``(state_dict, config)``) into ``slot``."""
        return load_peft_adapter(adapter, slot, self.targets(), adapter_name=adapter_name,
                                 strict=strict)

    def unload_adapter(self, slot: int) -> None:
        for m in self.layers.values():
            m.lora.unload(slot)

    def set_batch(self, batch: LoRABatch | None) -> None:
        """Route the next forwards with ``batch`` (rows of the flattened layer inputs)."""
        self.context.set_batch(batch)

    def set_adapters(self, seq_slots: Sequence[int] | torch.Tensor | None) -> None:
        """One slot (or -1) per sequence, for inputs ``[num_sequences, seq_len]``."""
        self.context.set_sequence_adapters(seq_slots)

    @contextlib.contextmanager
    def batch(self, batch: LoRABatch | None) -> Iterator[LoRABatch | None]:
        """``with handle.batch(b): model(...)`` routes with ``b``, restoring the previous state."""
        saved = (self.context._batch, self.context._seq_slots)
        self.context.set_batch(batch)
        try:
            yield batch
        finally:
            self._restore(saved)

    @contextlib.contextmanager
    def adapters(self, seq_slots: Sequence[int] | torch.Tensor) -> Iterator[None]:
        """``with handle.adapters([0, -1, 2]): model(input_ids)`` for 3 equal-length sequences."""
        saved = (self.context._batch, self.context._seq_slots)
        self.context.set_sequence_adapters(seq_slots)
        try:
            yield
        finally:
            self._restore(saved)

    def _restore(self, saved: tuple) -> None:
        batch, slots = saved
        if batch is not None:
            self.context.set_batch(batch)
        else:
            self.context.set_sequence_adapters(slots)

    def static_batch(self, max_tokens: int) -> LoRABatch:
        """A :meth:`LoRABatch.empty` on the model's device, set as the current batch (CUDA
        graphs: capture with it, refill it with ``update_`` before each replay)."""
        dev = next(iter(self.layers.values())).lora.device
        b = LoRABatch.empty(max_tokens, device=dev)
        self.set_batch(b)
        return b

    def __repr__(self) -> str:
        return (f"LoRAModel({len(self.layers)} LoRA layers, num_slots={self.num_slots}, "
                f"max_rank={self.max_rank})")


def _matches(name: str, targets: Sequence[str]) -> bool:
    return name.split(".")[-1] in targets


def patch_model(
    model: nn.Module,
    target_modules: Sequence[str] = LLAMA_TARGET_MODULES,
    num_slots: int = 8,
    max_rank: int = 64,
    *,
    fuse: bool = True,
    lora_dtype: torch.dtype | None = None,
    peft_prefix: str = "",
) -> LoRAModel:
    """Replace the target ``nn.Linear`` layers of ``model`` with :class:`LoRALinear`, in place.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face Llama-style model (``LlamaForCausalLM``, ``LlamaModel``, Mistral, Qwen2,
        ... anything with those projection names).
    target_modules : sequence of str
        Attribute names of the linear layers to patch (default: all seven projections).
    num_slots, max_rank : int
        Adapter slots and the largest rank per layer.
    fuse : bool
        Fuse sibling ``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` (all
        targeted, same input width) into one layer each.
    lora_dtype : torch.dtype, optional
        dtype of the LoRA weights (default: the base weights' dtype).
    peft_prefix : str
        Prepended to module names to form PEFT module names (PEFT names modules relative to
        the model it wrapped; ``""`` when that is the model being patched).

    Returns
    -------
    LoRAModel
    """
    context = LoRAContext()
    layers: dict[str, LoRALinear] = {}
    pfx = peft_prefix + "." if peft_prefix and not peft_prefix.endswith(".") else peft_prefix
    plans = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, (LoRALinear, LoRASlice)):
            continue
        children = {n: c for n, c in parent.named_children()
                    if isinstance(c, nn.Linear) and n in target_modules}
        if children:
            plans.append((parent_name, parent, children))
    for parent_name, parent, children in plans:
        base = parent_name + "." if parent_name else ""
        done = set()
        if fuse:
            for group in _FUSE_GROUPS:
                if all(n in children for n in group) and \
                        len({children[n].in_features for n in group}) == 1:
                    mods = [children[n] for n in group]
                    names = [pfx + base + n for n in group]
                    fused = LoRALinear.from_linear(mods, num_slots, max_rank, context, names,
                                                   lora_dtype)
                    fname = _FUSED_NAME[group]
                    parent.add_module(fname, fused)
                    for i, n in enumerate(group):
                        setattr(parent, n, LoRASlice(fused, i))
                    layers[base + fname] = fused
                    done.update(group)
        for n, lin in children.items():
            if n in done:
                continue
            m = LoRALinear.from_linear(lin, num_slots, max_rank, context, [pfx + base + n],
                                       lora_dtype)
            setattr(parent, n, m)
            layers[base + n] = m
    if not layers:
        raise ValueError(f"no nn.Linear named {list(target_modules)} found in the model")
    return LoRAModel(model, layers, context, num_slots, max_rank)

