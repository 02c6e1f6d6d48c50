"""Per-release adapters for Triton 3.0 ... 3.9.

Everything that differs between Triton releases and matters to :mod:`.fast` lives here:

* how Triton specialises one argument (used, unchanged, for every argument that the
  generated key code does not handle inline),
* how constexpr values enter Triton's cache key (``repr`` in 3.0-3.4, where the key is a
  string; the value itself in 3.5+, where the first-level key is a tuple),
* which arguments the compiled kernel's launcher takes (non-constexpr only before 3.3),
* which pieces of global state Triton reads on every call to build its options
  (``debug``, instrumentation mode, ...) and which launch hooks exist,
* Triton's own key for a set of arguments (the reference the equivalence tests compare to).

Nothing here copies Triton code; it calls Triton's own helpers where possible so that the
slow path is exact by construction.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SUPPORTED",
    "Adapter",
    "UnsupportedTriton",
    "get_adapter",
    "parse_version",
    "reference_backend",
    "reference_keyer",
]

#: First and last supported (major, minor) release.
SUPPORTED = ((3, 0), (3, 9))


class UnsupportedTriton(RuntimeError):
    """Raised when the installed Triton (or its internals) is not one the adapters know."""


def parse_version(text: str) -> tuple[int, int]:
    """Return ``(major, minor)`` from a Triton version string such as ``"3.6.0+git1234"``.

    Parameters
    ----------
    text : str
        ``triton.__version__``.

    Returns
    -------
    tuple of int
        Major and minor release numbers.
    """
    parts = text.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError) as exc:
        raise UnsupportedTriton(f"cannot parse Triton version {text!r}") from exc


@dataclass(frozen=True)
class Adapter:
    """What fast_launch needs to know about one Triton release.

    Attributes
    ----------
    version : tuple of int
        ``(major, minor)``.
    passes_constexprs : bool
        True from 3.3: the compiled launcher receives every bound argument, constexprs
        included; before, only the non-constexpr ones.
    constexpr_by_repr : bool
        True up to 3.4, where Triton's cache key is a string, so constexpr values are told
        apart by ``repr``; from 3.5 the first-level key is a tuple compared with ``==``.
    has_align_flag : bool
        ``do_not_specialize_on_alignment`` exists (3.2+).
    state_exprs : tuple of str
        Expressions (over the generated code's namespace) for the global state Triton reads
        on every launch to build its options. The fast path is taken only while each still
        evaluates to the very object it had when the launcher was built.
    hooks_idle_expr : str
        Expression that is true while no launch enter/exit hook is installed.
    """

    version: tuple[int, int]
    passes_constexprs: bool
    constexpr_by_repr: bool
    has_align_flag: bool
    state_exprs: tuple[str, ...]
    hooks_idle_expr: str
    notes: tuple[str, ...] = field(default=())

    # ------------------------------------------------------------------ namespace
    def runtime_namespace(self, jit: Any) -> dict[str, Any]:
        """Objects the state / hook expressions refer to.

        Parameters
        ----------
        jit : triton.runtime.JITFunction
            The wrapped kernel.

        Returns
        -------
        dict
            Names bound in the generated code's globals.
        """
        ns: dict[str, Any] = {"_fl_jit": jit}
        env_data = getattr(os.environ, "_data", None)
        if isinstance(env_data, dict):
            ns["_fl_envget"] = env_data.get
            ns["_fl_ENV_DEBUG"] = b"TRITON_DEBUG" if os.name != "nt" else "TRITON_DEBUG"
        else:  # pragma: no cover - non-CPython
            ns["_fl_envget"] = os.environ.get
            ns["_fl_ENV_DEBUG"] = "TRITON_DEBUG"
        if self.version >= (3, 4):
            from triton import knobs

            ns["_fl_rt"] = knobs.runtime
            ns["_fl_cc"] = knobs.compilation
            if self.version >= (3, 5):
                ns["_fl_H0"] = knobs.runtime.launch_enter_hook
                ns["_fl_H1"] = knobs.runtime.launch_exit_hook
                if not hasattr(ns["_fl_H0"], "calls") or not hasattr(ns["_fl_H1"], "calls"):
                    raise UnsupportedTriton("knobs.runtime launch hooks are not HookChains")
        else:
            from triton.compiler import CompiledKernel

            ns["_fl_CK"] = CompiledKernel
        return ns

    # ------------------------------------------------------------------ slow specialisation
    def generic_spec(self, param: Any, backend: Any) -> Callable[[Any], Hashable]:
        """Exact key part for one un-annotated, non-constexpr parameter, via Triton itself.

        Parameters
        ----------
        param : triton.runtime.jit.KernelParam
            Triton's own parameter description (annotation, do_not_specialize, ...).
        backend : object
            The backend object Triton's binder uses for the current target.

        Returns
        -------
        callable
            ``f(arg) -> hashable`` whose equality classes are Triton's for that argument.
        """
        f, wrap = self._spec_impl(param, backend)
        if wrap is None:
            return f
        return wrap

    def annotated_spec(self, param: Any, backend: Any) -> Callable[[Any], Hashable] | None:
        """Key part for a parameter with a type annotation (``x: tl.int32`` ...).

        Returns
        -------
        callable or None
            None when Triton does not specialise the parameter at all (its key part is a
            constant and can be left out).
        """
        v = self.version
        ann = param.annotation_type
        spec, align, is_const = _flags(self, param)
        if v >= (3, 3):
            if v >= (3, 4) and isinstance(ann, str) and (ann == "u1" or ann[:2] in ("fp", "bf")):
                return None
            full = self.generic_spec(param, backend)
            if self.constexpr_by_repr:  # 3.3 / 3.4: generic_spec returns repr of the tuple
                raw, _ = self._spec_impl(param, backend)
                return lambda x: repr(raw(x)[1:])
            return lambda x: full(x)[1:]
        # 3.0 - 3.2: the type is the annotation (constant); only the spec key varies
        if not spec:
            return None
        if v >= (3, 2):
            key = backend.compute_spec_key
            return lambda x: key(x, align=align)
        from triton.runtime.jit import compute_spec_key

        return compute_spec_key

    def _spec_impl(self, param: Any, backend: Any) -> tuple[Callable, Callable | None]:
        v = self.version
        spec, align, is_const = _flags(self, param)
        if v >= (3, 6):
            from triton.runtime.jit import native_specialize_impl as nsi

            return (lambda x: nsi(backend, x, is_const, spec, align)), None
        if v >= (3, 4):
            from triton.runtime.jit import create_specialize_impl

            impl = create_specialize_impl(backend.get_arg_specialization)
            f = lambda x: impl(x, is_const, spec, align)
            if v == (3, 4):
                return f, (lambda x: repr(f(x)))
            return f, None
        if v == (3, 3):
            from triton.runtime.jit import create_specialize_impl

            impl = create_specialize_impl()
            extra = backend.get_arg_specialization
            f = lambda x: impl(x, extra, is_const, spec, align)
            return f, (lambda x: repr(f(x)))
        from triton.runtime.jit import mangle_type

        if v == (3, 2):
            key = backend.compute_spec_key
            if spec:
                return (lambda x: (mangle_type(x, is_const), key(x, align=align))), None
            return (lambda x: (mangle_type(x, is_const), None)), None
        from triton.runtime.jit import compute_spec_key

        if spec:
            return (lambda x: (mangle_type(x, is_const), compute_spec_key(x))), None
        return (lambda x: (mangle_type(x, is_const), None)), None

    # ------------------------------------------------------------------ compiled kernels
    def launch_entry(self, kernel: Any) -> tuple[Any, Any, Any]:
        """``(run, function, packed_metadata)`` of a CompiledKernel (initialising handles).

        Parameters
        ----------
        kernel : triton.compiler.CompiledKernel
            What ``JITFunction.run`` returned.

        Returns
        -------
        tuple
            The launcher callable, the driver function handle, the packed metadata.
        """
        run = kernel.run  # property: loads the binary and builds the launcher if needed
        function = kernel.function
        packed = kernel.packed_metadata
        if function is None or run is None:
            raise UnsupportedTriton("compiled kernel has no function handle / launcher")
        return run, function, packed


    @property
    def scratch_params(self) -> int:
        """Trailing scratch-pointer parameters every compiled CUDA kernel takes (global
        scratch from 3.3, profile scratch from 3.5)."""
        return 2 if self.version >= (3, 5) else 1 if self.version >= (3, 3) else 0

    @property
    def lean_capable(self) -> bool:
        """3.5 / 3.6: the CUDA launcher's C entry point can be called without its Python
        ``__call__`` (which only allocates scratch buffers, none for most kernels)."""
        return self.version in ((3, 5), (3, 6))

    def lean_entry(self, kernel: Any) -> tuple[Any, Any, Any, Any, Any]:
        """``(launch, function, packed_metadata, cooperative, pdl)`` for the lean path.

        ``launch`` is the compiled C ``launch`` when the kernel needs no global / profile
        scratch memory (then ``CudaLauncher.__call__`` would pass ``None`` for both), else a
        relay to ``CudaLauncher.__call__`` with the same argument layout.
        """
        run, function, packed = self.launch_entry(kernel)
        launch = getattr(run, "launch", None)
        direct = (
            type(run).__name__ == "CudaLauncher"
            and type(launch).__name__ == "builtin_function_or_method"
            and getattr(run, "global_scratch_size", 1) == 0
            and getattr(run, "profile_scratch_size", 1) == 0
        )
        if direct:
            return launch, function, packed, run.launch_cooperative_grid, run.launch_pdl

        def relay(gx, gy, gz, stream, fn, coop, pdl, gs, ps, md, lm, eh, xh, *args):
            return run(gx, gy, gz, stream, fn, md, lm, eh, xh, *args)

        return relay, function, packed, False, False


def _flags(adapter: Adapter, param: Any) -> tuple[bool, bool, bool]:
    spec = not param.do_not_specialize
    align = True
    if adapter.has_align_flag:
        align = not getattr(param, "do_not_specialize_on_alignment", False)
    return spec, align, bool(param.is_const)


def get_adapter(version: str | tuple[int, int] | None = None) -> Adapter:
    """Adapter for a Triton release (default: the installed one).

    Parameters
    ----------
    version : str or tuple, optional
        ``"3.6.0"`` or ``(3, 6)``; default ``triton.__version__``.

    Returns
    -------
    Adapter

    Raises
    ------
    UnsupportedTriton
        For releases outside 3.0 ... 3.9.
    """
    if version is None:
        import triton

        version = triton.__version__
    v = parse_version(version) if isinstance(version, str) else tuple(version)[:2]
    if not (SUPPORTED[0] <= v <= SUPPORTED[1]):
        raise UnsupportedTriton(f"Triton {v[0]}.{v[1]} is outside the supported 3.0-3.9 range")
    env_debug = "_fl_envget(_fl_ENV_DEBUG)"
    if v <= (3, 1):
        state: tuple[str, ...] = ("_fl_jit.debug",)
    elif v == (3, 2):
        state = (env_debug,)
    elif v == (3, 3):
        state = ("_fl_jit.debug", env_debug)
    else:
        state = ("_fl_jit.debug", "_fl_rt.debug")
        if v >= (3, 6):
            state += ("_fl_cc.instrumentation_mode",)
        if v >= (3, 7):
            state += ("_fl_rt.add_stages_inspection_hook",)
        if v >= (3, 9):
            state += ("_fl_cc.fpsan_homomorphic_casts",)
    if v <= (3, 3):
        hooks = "(_fl_CK.launch_enter_hook is None and _fl_CK.launch_exit_hook is None)"
    elif v == (3, 4):
        hooks = "(_fl_rt.launch_enter_hook is None and _fl_rt.launch_exit_hook is None)"
    else:
        hooks = (
            "(_fl_rt.launch_enter_hook is _fl_H0 and not _fl_H0.calls"
            " and _fl_rt.launch_exit_hook is _fl_H1 and not _fl_H1.calls)"
        )
    return Adapter(
        version=v,
        passes_constexprs=v >= (3, 3),
        constexpr_by_repr=v <= (3, 4),
        has_align_flag=v >= (3, 2),
        state_exprs=state,
        hooks_idle_expr=hooks,
    )


# ---------------------------------------------------------------------- test references
def reference_backend(kind: str = "cuda", version: tuple[int, int] | None = None) -> Any:
    """A backend object usable by Triton's binder without a GPU (for tests).

    Parameters
    ----------
    kind : {"cuda", "hip"}
        Which backend.
    version : tuple of int, optional
        Triton release; default the installed one.

    Returns
    -------
    object
        A ``CUDABackend`` / ``HIPBackend`` instance for a fixed target (sm_90 / gfx942).
    """
    from triton.backends.compiler import GPUTarget

    if kind == "cuda":
        from triton.backends.nvidia.compiler import CUDABackend as cls

        target = GPUTarget("cuda", 90, 32)
    else:
        from triton.backends.amd.compiler import HIPBackend as cls

        target = GPUTarget("hip", "gfx942", 64)
    try:
        return cls(target)
    except Exception:  # constructors that probe the machine: the class has static methods
        return cls


def reference_keyer(jit: Any, backend: Any,
                    adapter: Adapter | None = None) -> Callable[..., Hashable]:
    """Triton's own cache key for a call, computed with Triton's own generated binder.

    For 3.5+ this is the first-level key ``(tuple(specialization), str(options))`` that
    ``compute_cache_key`` memoises on; before, the string key ``JITFunction.run`` uses.
    Global state Triton injects into the options (``debug`` ...) is left out: fast_launch
    guards it separately.

    Parameters
    ----------
    jit : JITFunction
    backend : object
        From :func:`reference_backend`.
    adapter : Adapter, optional

    Returns
    -------
    callable
        ``keyer(*args, **kwargs) -> hashable``.
    """
    from triton.runtime import jit as jitmod

    a = adapter or get_adapter()
    v = a.version
    if v >= (3, 2):
        binder = jitmod.create_function_from_signature(jit.signature, jit.params, backend)
    else:
        binder = jitmod.create_function_from_signature(jit.signature, jit.params)

    if v >= (3, 3):
        def keyer(*args: Any, **kwargs: Any) -> Hashable:
            _, spec, options = binder(*args, **kwargs)
            if v >= (3, 5):
                return (tuple(spec), str(options))
            return str(spec) + str(options)
    else:
        def keyer(*args: Any, **kwargs: Any) -> Hashable:
            _, sig_and_spec, constexpr_vals, _, excess = binder(*args, **kwargs)
            return "".join(sig_and_spec) + str((constexpr_vals, excess))
    return keyer
