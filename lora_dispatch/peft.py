"""Load Hugging Face PEFT LoRA adapters into :class:`~lora_dispatch.LoRAWeights` slots.

A PEFT adapter is a directory with ``adapter_config.json`` and ``adapter_model.safetensors``
(or ``adapter_model.bin``), or an in-memory ``(state_dict, config_dict)`` pair. Its tensors are
named ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (``lora_A.<adapter
name>.weight`` in a live model's ``state_dict()``), with ``lora_A`` ``[r, in]`` and ``lora_B``
``[out, r]``: exactly the layout :meth:`LoRAWeights.load` takes.

The engine says where each PEFT module goes with ``targets``: one entry per LoRA-enabled layer,
the layer's :class:`LoRAWeights` and the PEFT module names forming its slices, in slice order::

    targets = {
        "layers.0.qkv": (w_qkv0, ["model.layers.0.self_attn.q_proj",
                                  "model.layers.0.self_attn.k_proj",
                                  "model.layers.0.self_attn.v_proj"]),
        "layers.0.o": (w_o0, ["model.layers.0.self_attn.o_proj"]),
        ...
    }
    load_peft_adapter("path/to/adapter", slot=3, targets=targets)

Module names are matched against the adapter's module names (the part between
``base_model.model.`` and ``.lora_A``) exactly, or else as a unique dot-bounded suffix
(``"layers.0.self_attn.q_proj"`` finds ``"model.layers.0.self_attn.q_proj"``). A slice whose
module the adapter does not target gets no delta. :func:`llama_targets` builds ``targets`` for
Llama-style decoder layers.

Scaling follows PEFT: ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``), with
``r`` and ``lora_alpha`` taken per module from ``rank_pattern`` / ``alpha_pattern`` (a pattern
key matches a module name ``m`` when ``re.match(rf"(.*\\.)?({key})$", m)``, first key wins, as
PEFT's ``get_pattern_key``).

Everything is validated before anything is written: a bad adapter leaves every slot as it was.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .weights import LoRAWeights

__all__ = [
    "load_peft_adapter",
    "read_peft_adapter",
    "llama_targets",
    "PeftAdapterInfo",
    "LLAMA_GROUPS",
]

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"

# Projection groups of a Llama-style decoder layer -> PEFT module names (relative to the layer).
LLAMA_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "q": ("self_attn.q_proj",),
    "k": ("self_attn.k_proj",),
    "v": ("self_attn.v_proj",),
    "o": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "gate": ("mlp.gate_proj",),
    "up": ("mlp.up_proj",),
    "down": ("mlp.down_proj",),
}
for _short, _mods in list(LLAMA_GROUPS.items()):
    if len(_mods) == 1:  # also accept the Hugging Face attribute names: q_proj, gate_proj, ...
        LLAMA_GROUPS[_mods[0].split(".")[-1]] = _mods

_PREFIXES = ("base_model.model.",)
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight$"
)
_UNSUPPORTED_KEYS = (
    (re.compile(r"\.lora_magnitude_vector(\.|$)"), "DoRA (use_dora=True)"),
    (re.compile(r"\.lora_embedding_[AB](\.|$)"), "LoRA on embedding layers"),
    (re.compile(r"\.lora_B(\.[^.]+)?\.bias$"), "LoRA biases (lora_bias=True)"),
    (re.compile(r"(^|\.)modules_to_save(\.|$)"), "fully trained modules (modules_to_save)"),
    (re.compile(r"(^|\.)trainable_tokens"), "trainable tokens (trainable_token_indices)"),
    (re.compile(r"\.bias$"), "trained base-layer biases (bias='all' or 'lora_only')"),
)


@dataclass
class PeftAdapterInfo:
    """What :func:`load_peft_adapter` loaded.

    Attributes
    ----------
    slot : int
    config : dict
        The adapter's config (``adapter_config.json``).
    modules : dict[str, tuple[int, float]]
        ``(rank, scaling)`` of every adapter module that was loaded, by PEFT module name.
    layers : dict[str, int]
        Slot rank per target layer (``0``: the adapter does not touch that layer, whose slot
        was emptied).
    """

    slot: int
    config: dict[str, Any]
    modules: dict[str, tuple[int, float]] = field(default_factory=dict)
    layers: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading
def _config_dict(config: object) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):  # a peft.LoraConfig
        d = to_dict()
        return {k: (v.value if hasattr(v, "value") else v) for k, v in d.items()}
    raise TypeError(f"adapter config must be a dict or a PEFT config, got {type(config).__name__}")


def read_peft_adapter(
    adapter: str | os.PathLike | tuple[Mapping[str, torch.Tensor], Mapping[str, Any]],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, config)`` of a PEFT adapter directory or pair, on the CPU. No network."""
    if isinstance(adapter, (str, os.PathLike)):
        root = Path(adapter)
        if not root.is_dir():
            raise FileNotFoundError(f"adapter directory {str(root)!r} does not exist")
        cfg_path = root / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{str(root)!r} has no {CONFIG_NAME}")
        config = json.loads(cfg_path.read_text())
        if (root / SAFETENSORS_NAME).is_file():
            try:
                from safetensors.torch import load_file
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError(
                    f"reading {SAFETENSORS_NAME} needs the 'safetensors' package"
                ) from e
            state = load_file(str(root / SAFETENSORS_NAME), device="cpu")
        elif (root / BIN_NAME).is_file():
            state = torch.load(root / BIN_NAME, map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"{str(root)!r} has neither {SAFETENSORS_NAME} nor {BIN_NAME}")
        return dict(state), _config_dict(config)
    if isinstance(adapter, tuple) and len(adapter) == 2:
        state, config = adapter
        if not isinstance(state, Mapping):
            raise TypeError(f"adapter state_dict must be a mapping, got {type(state).__name__}")
        for k, v in state.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise TypeError(f"adapter state_dict must map str to Tensor, got {k!r}: "
                                f"{type(v).__name__}")
        return dict(state), _config_dict(config)
    raise TypeError(
        "adapter must be a PEFT adapter directory or a (state_dict, config_dict) pair, "
        f"got {type(adapter).__name__}"
    )


# Config fields that select a LoRA variant whose forward is not ``x @ A^T @ B^T * scaling``.
_VARIANT_FIELDS = {
    "use_dora": "DoRA (use_dora=True)",
    "use_qalora": "QA-LoRA (use_qalora=True)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "arrow_config": "Arrow routing (arrow_config)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "kasa_config": "KaSA (kasa_config)",
    "lora_bias": "LoRA biases (lora_bias=True)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
}


def _check_config(config: Mapping[str, Any]) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ValueError(f"only LoRA adapters are supported, got peft_type={peft_type!r}")
    problems = [what for key, what in _VARIANT_FIELDS.items() if config.get(key)]
    if str(config.get("init_lora_weights", "")).lower() == "mica":
        problems.append("MiCA (init_lora_weights='mica')")
    if problems:
        raise ValueError("unsupported PEFT adapter feature(s): " + ", ".join(problems))


def _pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """The first pattern key matching ``module``, as PEFT's ``get_pattern_key``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def _module_rank_alpha(config: Mapping[str, Any], module: str) -> tuple[int, float]:
    r = config.get("r", 8)
    alpha = config.get("lora_alpha", 8)
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    k = _pattern_key(rank_pattern, module)
    if k is not None:
        r = rank_pattern[k]
    k = _pattern_key(alpha_pattern, module)
    if k is not None:
        alpha = alpha_pattern[k]
    return int(r), float(alpha)


def _scaling(config: Mapping[str, Any], r: int, alpha: float) -> float:
    if config.get("use_rslora"):
        return alpha / math.sqrt(r)
    return alpha / r


def _parse_state(
    state: Mapping[str, torch.Tensor], adapter_name: str | None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {"A": tensor, "B": tensor}}`` from PEFT keys; unsupported keys raise."""
    found: dict[str | None, dict[str, dict[str, torch.Tensor]]] = {}
    bad: list[tuple[str, str]] = []
    for key, tensor in state.items():
        k = key
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        m = _LORA_KEY.match(k)
        if m is None:
            bad.append((key, k))
            continue
        per = found.setdefault(m["adapter"], {})
        per.setdefault(m["module"], {})[m["kind"][-1]] = tensor
    for pattern, what in _UNSUPPORTED_KEYS:  # most specific explanation first
        for key, k in bad:
            if pattern.search(k):
                if what.startswith("trained base-layer") and config:
                    what = f"trained base-layer biases (bias={config.get('bias')!r})"
                raise ValueError(f"unsupported PEFT adapter feature: {what} (tensor {key!r})")
    if bad and config and config.get("modules_to_save"):
        raise ValueError(
            "unsupported PEFT adapter feature: fully trained modules (modules_to_save="
            f"{config['modules_to_save']!r}; tensor {bad[0][0]!r})"
        )
    if bad:
        raise ValueError(f"unrecognized tensor {bad[0][0]!r} in the adapter (expected "
                         "'<module>.lora_A.weight' / '<module>.lora_B.weight')")
    if not found:
        raise ValueError("the adapter has no LoRA tensors (no '*.lora_A.weight' keys)")
    names = sorted(found, key=lambda n: "" if n is None else n)
    if adapter_name is not None:
        if adapter_name in found:
            chosen = adapter_name
        elif None in found and len(found) == 1:
            chosen = None  # saved adapters carry no name in their keys
        else:
            raise ValueError(f"adapter_name {adapter_name!r} not in the state dict; it has "
                             f"{[n for n in names if n is not None]}")
    elif len(found) == 1:
        chosen = names[0]
    else:
        raise ValueError(
            f"the state dict holds several adapters {[n for n in names if n is not None]}; "
            "pass adapter_name"
        )
    modules = found[chosen]
    for mod, ab in modules.items():
        missing = {"A", "B"} - set(ab)
        if missing:
            raise ValueError(f"module {mod!r}: lora_{missing.pop()}.weight is missing")
    return modules


def _resolve(name: str, modules: Mapping[str, Any]) -> str | None:
    if name in modules:
        return name
    suffix = "." + name
    hits = [m for m in modules if m.endswith(suffix)]
    if len(hits) > 1:
        raise ValueError(f"target module {name!r} is ambiguous: it matches {sorted(hits)}")
    return hits[0] if hits else None


# --------------------------------------------------------------------------- loading
def load_peft_adapter(
    adapter: str | os.PathLike | tuple[Mapping[str, torch.Tensor], Mapping[str, Any]],
    slot: int,
    targets: Mapping[str, tuple[LoRAWeights, Sequence[str]]],
    *,
    adapter_name: str | None = None,
    strict: bool = True,
) -> PeftAdapterInfo:
    """Load a PEFT LoRA adapter into ``slot`` of every target layer.

    Parameters
    ----------
    adapter : path or (state_dict, config_dict)
        A PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors`` or
        ``adapter_model.bin``) or the same content in memory.
    slot : int
        The slot to fill in every target's :class:`LoRAWeights`.
    targets : mapping
        ``{layer name: (LoRAWeights, [PEFT module name per slice])}``. Slices whose module the
        adapter does not target get no delta; a layer the adapter does not touch has its slot
        emptied.
    adapter_name : str, optional
        Which adapter to take from a state dict holding several (``lora_A.<name>.weight``).
    strict : bool
        Raise if the adapter has LoRA weights for modules that no target names (default);
        ``False`` ignores them.

    Returns
    -------
    PeftAdapterInfo

    Raises
    ------
    ValueError
        Unsupported adapter features (DoRA, LoRA biases, embedding LoRA, trained biases, ...),
        shapes that do not fit a target (naming the module, expected and actual shapes), a
        rank above the target's ``max_rank`` or different from the config's, modules no target
        names (``strict``). Nothing is written then.
    """
    if not isinstance(targets, Mapping) or not targets:
        raise TypeError("targets must be a non-empty mapping {layer: (LoRAWeights, [modules])}")
    state, config = read_peft_adapter(adapter)
    _check_config(config)
    modules = _parse_state(state, adapter_name, config)

    plan: list[tuple[str, LoRAWeights, list, list, list]] = []
    used: set[str] = set()
    info = PeftAdapterInfo(slot=slot, config=config)
    for layer, entry in targets.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], LoRAWeights)):
            raise TypeError(f"targets[{layer!r}] must be (LoRAWeights, [module names])")
        w, names = entry
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"targets[{layer!r}] module names must be a list of str, got {names!r}")
        if len(names) != w.num_slices:
            raise ValueError(f"targets[{layer!r}] names {len(names)} modules but its LoRAWeights "
                             f"has {w.num_slices} slices {w.out_features}")
        w._check_slot(slot)
        a_list: list[torch.Tensor | None] = []
        b_list: list[torch.Tensor | None] = []
        scales: list[float] = []
        for i, name in enumerate(names):
            mod = _resolve(name, modules)
            if mod is None:
                a_list.append(None)
                b_list.append(None)
                scales.append(0.0)
                continue
            used.add(mod)
            a, b = modules[mod]["A"], modules[mod]["B"]
            out_i = w.out_features[i]
            for nm, t in (("lora_A", a), ("lora_B", b)):
                if not t.is_floating_point():
                    raise TypeError(f"module {mod!r}: {nm}.weight must be floating point, "
                                    f"got {t.dtype}")
                if t.dim() != 2:
                    raise ValueError(f"module {mod!r}: {nm}.weight must be 2-D (a Linear LoRA), "
                                     f"got shape {list(t.shape)}")
            r = a.shape[0]
            if a.shape[1] != w.in_features:
                raise ValueError(
                    f"module {mod!r} (layer {layer!r}, slice {i}): lora_A.weight expected "
                    f"[r, in_features={w.in_features}], got {list(a.shape)}"
                )
            if tuple(b.shape) != (out_i, r):
                raise ValueError(
                    f"module {mod!r} (layer {layer!r}, slice {i}): lora_B.weight expected "
                    f"[out_features={out_i}, r={r}], got {list(b.shape)}"
                )
            cfg_r, alpha = _module_rank_alpha(config, mod)
            if cfg_r != r:
                raise ValueError(f"module {mod!r}: the config gives rank {cfg_r} (r / rank_pattern)"
                                 f" but lora_A.weight has rank {r}")
            if r > w.max_rank:
                raise ValueError(f"module {mod!r}: rank {r} exceeds max_rank={w.max_rank} of "
                                 f"layer {layer!r}")
            c = _scaling(config, r, alpha)
            if not math.isfinite(c):
                raise ValueError(f"module {mod!r}: scaling {c} is not finite")
            a_list.append(a)
            b_list.append(b)
            scales.append(c)
            info.modules[mod] = (r, c)
        plan.append((layer, w, a_list, b_list, scales))

    unused = sorted(set(modules) - used)
    if unused and strict:
        shown = unused[:8] + (["..."] if len(unused) > 8 else [])
        raise ValueError(
            f"the adapter has LoRA weights for {len(unused)} module(s) that no target names: "
            f"{shown} (pass strict=False to ignore them)"
        )

    for layer, w, a_list, b_list, scales in plan:
        if all(a is None for a in a_list):
            w.unload(slot)
            info.layers[layer] = 0
            continue
        w.load(slot, a_list, b_list, scales)
        info.layers[layer] = w.host_ranks[slot]
    return info


def llama_targets(
    weights_by_layer: Sequence[Mapping[str, LoRAWeights]] | Mapping[int, Mapping[str, LoRAWeights]],
    prefix: str = "model.layers",
) -> dict[str, tuple[LoRAWeights, list[str]]]:
    """``targets`` for Llama-style decoder layers.

    Parameters
    ----------
    weights_by_layer : sequence (or {layer index: ...}) of {group: LoRAWeights}
        Per decoder layer, the engine's LoRA-enabled projections by group name: ``"qkv"``
        (3 slices q, k, v), ``"gate_up"`` (2 slices gate, up), ``"o"``, ``"down"``, or single
        projections ``"q"``/``"q_proj"``, ``"k"``, ``"v"``, ``"gate"``, ``"up"``, ... (see
        :data:`LLAMA_GROUPS`).
    prefix : str
        Module path of the decoder layers in the PEFT model (``"model.layers"`` for a
        ``LlamaForCausalLM``).

    Returns
    -------
    dict
        ``{"layers.<i>.<group>": (LoRAWeights, ["<prefix>.<i>.self_attn.q_proj", ...])}``.
    """
    items = weights_by_layer.items() if isinstance(weights_by_layer, Mapping) \
        else enumerate(weights_by_layer)
    out: dict[str, tuple[LoRAWeights, list[str]]] = {}
    for i, groups in items:
        for group, w in groups.items():
            if group not in LLAMA_GROUPS:
                raise ValueError(f"unknown projection group {group!r} for layer {i}; expected one "
                                 f"of {sorted(LLAMA_GROUPS)}")
            if not isinstance(w, LoRAWeights):
                raise TypeError(f"layer {i} group {group!r} must be a LoRAWeights, "
                                f"got {type(w).__name__}")
            mods = [f"{prefix}.{i}.{m}" if prefix else f"{i}.{m}" for m in LLAMA_GROUPS[group]]
            if len(mods) != w.num_slices:
                raise ValueError(f"layer {i} group {group!r} has {len(mods)} projections but its "
                                 f"LoRAWeights has {w.num_slices} slices")
            out[f"layers.{i}.{group}"] = (w, mods)
    return out
