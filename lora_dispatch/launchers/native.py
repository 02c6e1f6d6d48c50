"""Native tier of fast_launch: key, lookup and ``cuLaunchKernelEx`` in one C call.

``native.c`` is compiled at first use with the C compiler Triton itself needs, against
Python's headers and the ``cuda.h`` that ships inside Triton (libcuda is opened with
``dlopen`` at the first launch, so the module also builds and keys on machines without a
GPU, which is how the CPU tests check its key against Triton's specialisation). The shared
object is cached under ``$LORA_DISPATCH_CACHE_DIR`` (default ``~/.cache/lora_dispatch``),
keyed by a hash of the source, the interpreter and the header.

The C key covers what the inline key of :mod:`.spec` covers (tensors of the listed dtypes,
ints, floats, bools, None, int / bool / None / str constexprs and launch options; a str
constexpr is keyed by its hash and compared by value on a match); any other
argument makes the call return ``NotImplemented`` and the Python path handles it exactly.
Host tensor descriptors (``triton.tools.tensor_descriptor.TensorDescriptor`` and Gluon's
Hopper one) are keyed in C too, by what Triton keys them by (the base's dtype, the block
shape and the shared-memory layout); a variant compiled to TMA gets its ``CUtensorMap``
encoded in C at launch (``cuTensorMapEncodeTiled``, as Triton's ``fill_tma_descriptor``;
the last map per parameter is reused while base, shape, strides and padding are unchanged).
A variant is registered only when its launch needs nothing the C side does not do (no
global / profile scratch, no descriptor lowered to pointers, no non-portable cluster size).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "NativeUnavailable",
    "load",
    "native_launch_enabled",
    "set_native_launch",
    "desc_types",
    "slot_codes",
    "variant_descs",
    "variant_geometry",
    "variant_types",
]

logger = logging.getLogger("lora_dispatch.launchers")

_ENV = "LORA_DISPATCH_NATIVE"
_SRC = Path(__file__).with_name("native.c")
_HOT_SRC = _SRC.with_name("hot.c")  # included by native.c

# slot codes (native.c)
C_SKIP, C_GENERIC, C_GENERIC_SA, C_GENERIC_NOSPEC, C_CONSTEXPR, C_OPTION = range(6)
# parameter type codes (native.c)
(T_SKIP, T_PTR, T_I8, T_I16, T_I32, T_I64, T_U8, T_U16, T_U32, T_U64, T_FP32,
 T_FP64, T_DESC) = range(13)
_SCALAR_TYPES = {
    "i1": T_I8, "i8": T_I8, "i16": T_I16, "i32": T_I32, "i64": T_I64,
    "u1": T_U8, "u8": T_U8, "u16": T_U16, "u32": T_U32, "u64": T_U64,
    "fp32": T_FP32, "f32": T_FP32, "fp64": T_FP64,
}
MAX_SLOTS = 64
MAX_DESC_RANK = 5
# native.c DescMeta: swizzle, elem_size, elem_type, fp4_padded, rank, block[5] (int32)
_DESC_META = struct.Struct(f"{5 + MAX_DESC_RANK}i")

_module: Any = None
_error: str | None = None
_lock = threading.Lock()
_enabled: bool | None = None


class NativeUnavailable(RuntimeError):
    """The native module cannot be built or loaded here."""


def native_launch_enabled(version: tuple[int, int] | None = None) -> bool:
    """Whether new launchers take the native tier.

    ``LORA_DISPATCH_NATIVE=1`` / ``0`` forces it (it still needs Triton 3.5 or 3.6 with
    CUDA); unset, it is on for Triton 3.6, the release it was verified on.

    Parameters
    ----------
    version : tuple of int, optional
        The Triton release; default the installed one.

    Returns
    -------
    bool
    """
    global _enabled
    if _enabled is None:
        value = os.environ.get(_ENV, "auto").strip().lower()
        if value in ("", "auto"):
            if version is None:
                from .versions import get_adapter

                try:
                    version = get_adapter().version
                except Exception:
                    version = (0, 0)
            _enabled = version == (3, 6)
        else:
            _enabled = value not in ("0", "false", "no", "off")
    return _enabled


def set_native_launch(enabled: bool | None) -> bool:
    """Force the native tier on / off for launchers built from now on (None: re-read the
    environment). :func:`lora_dispatch.launchers.set_native_launch` also rebuilds live ones.

    Returns
    -------
    bool
    """
    global _enabled
    _enabled = enabled
    return native_launch_enabled()


def _cache_dir() -> Path:
    root = os.environ.get("LORA_DISPATCH_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lora_dispatch"


def _cuda_include() -> Path:
    import triton

    inc = Path(triton.__file__).parent / "backends" / "nvidia" / "include"
    if not (inc / "cuda.h").exists():
        raise NativeUnavailable(f"no cuda.h in {inc}")
    return inc


def _compiler() -> str:
    for cand in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if cand:
            exe = shutil.which(cand.split()[0])
            if exe:
                return exe
    raise NativeUnavailable("no C compiler found (set CC)")


def _build() -> Any:
    src = _SRC.read_text() + _HOT_SRC.read_text()
    inc = _cuda_include()
    py_inc = sysconfig.get_paths()["include"]
    cc = _compiler()
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    tag = hashlib.sha256(
        "\n".join([src, sys.version, py_inc, str(inc), (inc / "cuda.h").read_text()[:4096], cc])
        .encode()
    ).hexdigest()[:16]
    out_dir = _cache_dir() / f"native-{tag}"
    so = out_dir / f"lora_dispatch_native{suffix}"
    if not so.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            tmp_so = Path(tmp) / so.name
            cmd = [cc, "-O3", "-shared", "-fPIC", "-std=gnu11", "-Wall", "-o", str(tmp_so),
                   str(_SRC), f"-I{py_inc}", f"-I{inc}", "-ldl"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise NativeUnavailable(f"compiling native.c failed: {proc.stderr.strip()[:2000]}")
            os.replace(tmp_so, so)  # atomic: concurrent builders each publish a whole file
    spec = importlib.util.spec_from_file_location("lora_dispatch_native", so)
    if spec is None or spec.loader is None:
        raise NativeUnavailable(f"cannot load {so}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load() -> Any:
    """The compiled native module (built on first call, then cached on disk and here).

    Raises
    ------
    NativeUnavailable
        No compiler, no Triton ``cuda.h``, or the build failed (the reason is kept and
        raised again on later calls without rebuilding).
    """
    global _module, _error
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            if _error is not None:
                raise NativeUnavailable(_error)
            try:
                _module = _build()
            except Exception as exc:
                _error = f"{type(exc).__name__}: {exc}"
                raise NativeUnavailable(_error) from exc
    return _module


def slot_codes(plan: Any, option_names: list[str]) -> bytes | None:
    """Slot codes of a kernel (parameters, then launch options), or None when some
    parameter is keyed only by Triton's own helpers (annotated, specialised ones).

    Parameters
    ----------
    plan : KeyPlan
        From :func:`.spec.plan_key` (its ``ParamInfo.kind`` says how each is keyed).
    option_names : list of str
        The launch options passed as explicit keywords (``num_warps`` ...).
    """
    codes = []
    for p in plan.params:
        if p.kind == "constexpr":
            codes.append(C_CONSTEXPR)
        elif p.kind == "constant":
            codes.append(C_SKIP)
        elif p.kind == "generic":
            if not p.specialize:
                codes.append(C_GENERIC_NOSPEC)
            elif p.align:
                codes.append(C_GENERIC_SA)
            else:
                codes.append(C_GENERIC)
        else:
            return None
    codes += [C_OPTION] * len(option_names)
    if len(codes) > MAX_SLOTS:
        return None
    return bytes(codes)


def variant_types(kernel: Any, names: list[str]) -> bytes | None:
    """One type code per kernel parameter for a compiled variant, or None if the C side
    cannot pack its arguments (tuples, tensor descriptors, fp16 / bf16 scalars).

    Parameters
    ----------
    kernel : CompiledKernel
    names : list of str
        The kernel's parameter names, in order.
    """
    sig = getattr(getattr(kernel, "src", None), "signature", None)
    if not isinstance(sig, dict) or list(sig) != names:
        return None
    out = []
    for ty in sig.values():
        if not isinstance(ty, str):
            return None
        if ty == "constexpr":
            out.append(T_SKIP)
        elif ty.startswith("*"):
            out.append(T_PTR)
        elif ty in _SCALAR_TYPES:
            out.append(_SCALAR_TYPES[ty])
        elif ty.startswith("tensordesc<"):
            out.append(T_DESC)
        else:
            return None
    if T_DESC in out and variant_descs(kernel) is None:
        return None
    return bytes(out)


def variant_descs(kernel: Any) -> bytes | None:
    """The TMA metadata of a compiled variant's tensor-descriptor parameters, packed for
    ``fl_register`` (empty without descriptors), or None when one of them was not lowered
    to a ``CUtensorMap`` (Triton then passes it as pointer, shape and strides).

    Parameters
    ----------
    kernel : CompiledKernel
    """
    sig = getattr(getattr(kernel, "src", None), "signature", None) or {}
    n = sum(isinstance(t, str) and t.startswith("tensordesc<") for t in sig.values())
    if not n:
        return b""
    metas = getattr(kernel.metadata, "tensordesc_meta", None)
    if not metas or len(metas) != n:
        return None
    try:  # CUtensorMapDataType from the element type the compiler records, as Triton maps it
        from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST as to_host
    except ImportError:
        return None
    out = []
    for m in metas:
        if not isinstance(m, dict):
            return None
        block = [int(b) for b in m["block_size"]]
        if not 1 <= len(block) <= MAX_DESC_RANK or int(m["elem_type"]) not in to_host:
            return None
        out.append(_DESC_META.pack(int(m["swizzle"]), int(m["elem_size"]),
                                   to_host[int(m["elem_type"])],
                                   int(bool(m.get("fp4_padded", False))), len(block),
                                   *block, *[0] * (MAX_DESC_RANK - len(block))))
    return b"".join(out)


def variant_geometry(kernel: Any, n_null: int) -> tuple[int, int, int, int, int, int] | None:
    """``(block, grid_mult, shared, cooperative, pdl, n_null)`` of a compiled variant, or
    None when its launch needs scratch memory or a non-portable cluster.

    Parameters
    ----------
    kernel : CompiledKernel
    n_null : int
        Trailing scratch-pointer parameters of this Triton release (passed as 0).
    """
    md = kernel.metadata
    if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):
        return None
    num_ctas = int(getattr(md, "num_ctas", 1))
    if num_ctas < 1 or num_ctas >= 16:
        return None
    warp = 32
    target = getattr(md, "target", None)
    if target is not None and getattr(target, "backend", "cuda") != "cuda":
        return None
    block = warp * int(md.num_warps)
    return (block, num_ctas, int(md.shared), int(bool(getattr(md, "launch_cooperative_grid",
                                                                False))),
            int(bool(getattr(md, "launch_pdl", False))), n_null)


def torch_dtypes() -> tuple:
    """Every torch dtype a tensor argument may have (the C key stores its index)."""
    import torch

    names = ["float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64",
             "uint8", "uint16", "uint32", "uint64", "bool", "float8_e4m3fn", "float8_e5m2",
             "float8_e4m3fnuz", "float8_e5m2fnuz", "complex64", "complex128"]
    return tuple(getattr(torch, n) for n in names if isinstance(getattr(torch, n, None),
                                                                  torch.dtype))


def tensor_types() -> tuple:
    """Argument classes keyed as tensors (exact class match)."""
    import torch

    return (torch.Tensor, torch.nn.Parameter)


def desc_types() -> tuple:
    """Host tensor-descriptor classes keyed in C (exact class match; index = key value):
    Triton's and Gluon's Hopper / Blackwell ones, where this release has them."""
    out = []
    for mod, name in (("triton.tools.tensor_descriptor", "TensorDescriptor"),
                      ("triton.experimental.gluon.nvidia.hopper", "TensorDescriptor"),
                      ("triton.experimental.gluon.nvidia.blackwell", "TensorDescriptor")):
        try:
            cls = getattr(importlib.import_module(mod), name)
        except Exception:
            continue
        if isinstance(cls, type) and cls not in out:
            out.append(cls)
    return tuple(out[:4])


def register(ns: dict[str, Any], kernel: Any, dev: int, args: tuple, kwargs: dict,
             names: list[str], n_null: int, pdl: bool = False) -> bool:
    """Store a freshly compiled variant in the kernel's native table.

    Parameters
    ----------
    ns : dict
        The generated code's namespace (``_fl_nat`` ...).
    kernel : CompiledKernel
        What Triton's own path returned for ``args`` / ``kwargs``.
    dev : int
    args : tuple
        The kernel's parameters, in order.
    kwargs : dict
        Launch options that were passed.
    names : list of str
        Parameter names.
    n_null : int
        Trailing scratch parameters of the release.
    pdl : bool
        Launch this variant with programmatic dependent launch (``fast_launch(pdl=...)``).

    Returns
    -------
    bool
        Whether a variant was stored.
    """
    opts = ns["_fl_nat_slots"]
    if set(kwargs) - set(opts):
        return False
    from .codegen import NOT_SET

    slots = tuple(args) + tuple(kwargs.get(o, NOT_SET) for o in opts)
    key = ns["_fl_natkey"](ns["_fl_nat"], dev, *slots)
    if key is None:
        return False
    types = variant_types(kernel, names)
    geometry = variant_geometry(kernel, n_null)
    descs = variant_descs(kernel)
    if types is None or geometry is None or descs is None:
        return False
    if pdl:
        geometry = (*geometry[:4], 1, geometry[5])
    function = kernel.function
    if not isinstance(function, int):
        return False
    return bool(ns["_fl_natreg"](ns["_fl_nat"], dev, key, function, *geometry, types, kernel,
                                 slots, descs))


def available() -> bool:
    """Whether the native tier can run with the installed Triton: a release whose launch
    layout it knows (3.5 / 3.6) and a module that builds here (no GPU needed)."""
    from .versions import get_adapter

    try:
        if not get_adapter().lean_capable:
            return False
        load()
    except Exception:
        return False
    return True
