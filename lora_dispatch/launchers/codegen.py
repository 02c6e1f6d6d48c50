"""Source generation for one kernel's launch and key functions.

The generated module defines

``_fl_launch(_fl_grid, <kernel params>, *, num_warps=, num_stages=, num_ctas=, **_fl_opts)``
    the hot path: guards, key, cache lookup, grid, stream, compiled launcher call;
``_fl_key(<kernel params>, *, num_warps=, num_stages=, num_ctas=, **_fl_opts)``
    the same key expression, returned (for tests and :meth:`FastLauncher.key`);
``_fl_ready()``
    whether a call may take the fast path now (the launch function's guards, no launch);
``_fl_ready_local()``
    ``_fl_ready`` without the checks of Triton's global state (hooks, knobs), which read
    the same for every kernel whose ``_fl_global_snap`` holds the same objects;
``_fl_state()``
    the global state Triton folds into its options (snapshot taken at build time);
``_fl_entry(kernel)``
    what is stored per variant: ``(run, function, packed_metadata, kernel)``.
"""

from __future__ import annotations

import inspect
from typing import Any

from .spec import plan_key
from .versions import Adapter, UnsupportedTriton

__all__ = ["OPTION_KEYWORDS", "build_source"]

#: Launch options taken as explicit keyword-only parameters (cheaper than ``**kwargs``).
OPTION_KEYWORDS = ("num_warps", "num_stages", "num_ctas")


class _NotSet:
    """Marker for an option keyword that was not passed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not set>"


NOT_SET = _NotSet()


def _signature(jit: Any) -> list[inspect.Parameter]:
    params = list(jit.signature.parameters.values())
    for p in params:
        if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            raise UnsupportedTriton(f"parameter {p.name!r} is {p.kind.description}")
        if p.name.startswith("_fl_"):
            raise UnsupportedTriton(f"parameter name {p.name!r} clashes with generated names")
    return params


def build_source(jit: Any, adapter: Adapter, backend: Any, inline: bool = True,
                 single_device: bool = True, lean: bool = False,
                 native: bool = False) -> tuple[str, dict[str, Any]]:
    """Generate the launch / key functions of ``jit`` for one Triton release and backend.

    Parameters
    ----------
    jit : JITFunction
    adapter : Adapter
    backend : object
        Backend object for Triton's exact specialisation helpers.
    inline : bool
        Inline tensor / int key parts (CUDA); False routes them through Triton (HIP).
    single_device : bool
        One visible device: skip the current-device query, use one dict.
    lean : bool
        Call the C launch entry point directly (3.5 / 3.6 CUDA, see
        :meth:`Adapter.lean_entry`) instead of the compiled kernel's ``run``.
    native : bool
        Try the native tier first (see :mod:`.native`; implies ``inline`` and needs
        :attr:`Adapter.lean_capable`); ``ns["_fl_nat"]`` is then the C key / variant table
        and ``ns["_fl_nat_slots"]`` the option names that follow the parameters.

    Returns
    -------
    source : str
    namespace : dict
        Globals for ``exec`` (device / stream / callback helpers are added by the caller).
    """
    sig = _signature(jit)
    plan = plan_key(jit, adapter, backend, inline=inline)
    ns: dict[str, Any] = dict(plan.namespace)
    ns.update(adapter.runtime_namespace(jit))
    ns["_fl_NS"] = NOT_SET
    lean = lean and adapter.lean_capable
    ns["_fl_launch_entry"] = adapter.lean_entry if lean else adapter.launch_entry
    names = [p.name for p in sig]
    opts = [o for o in OPTION_KEYWORDS if o not in names]

    head = []
    for p in sig:
        if p.default is inspect.Parameter.empty:
            head.append(p.name)
        else:
            ns[f"_fl_d_{p.name}"] = p.default
            head.append(f"{p.name}=_fl_d_{p.name}")
    tail = (["*"] + [f"{o}=_fl_NS" for o in opts] if opts else []) + ["**_fl_opts"]
    params_src = ", ".join(head + tail)
    key_items = plan.parts + opts + ["(tuple(_fl_opts.items()) if _fl_opts else ())"]
    key_src = "(\n        " + ",\n        ".join(key_items) + ",\n    )"
    all_args = ", ".join(names)
    args_tuple = f"({all_args},)" if names else "()"
    by_name = {kp.name: kp for kp in jit.params}
    launch_names = [n for n in names if adapter.passes_constexprs or not by_name[n].is_constexpr]
    launch_args = "".join(f", {n}" for n in launch_names)
    meta_dict = "{" + ", ".join(f"{n!r}: {n}" for n in names) + "}"
    kw_src = f"_fl_kw(_fl_opts{''.join(', ' + o for o in opts)})"
    native = native and inline and adapter.lean_capable and _native_table(jit, plan, opts, ns)

    state_checks = []
    for i, expr in enumerate(adapter.state_exprs):
        ns[f"_fl_S{i}"] = eval(expr, ns)  # snapshot: the fast path requires these objects
        state_checks.append(f"{expr} is not _fl_S{i}")
    ns["_fl_prh"] = jit.pre_run_hooks  # Triton only ever appends to this list
    guard = " or ".join(["_fl_prh", f"not {adapter.hooks_idle_expr}"]
                        + state_checks)
    # the guard's part that reads this kernel alone; the rest reads Triton's global state
    # against the snapshots in _fl_global_snap (a launch group checks it once for kernels
    # whose snapshots are the same objects)
    local = [i for i, e in enumerate(adapter.state_exprs) if e.startswith("_fl_jit.")]
    local_guard = " or ".join(["_fl_prh"] + [state_checks[i] for i in local])
    ns["_fl_global_snap"] = tuple(
        [ns[f"_fl_S{i}"] for i in range(len(adapter.state_exprs)) if i not in local]
        + [ns.get(h) for h in ("_fl_H0", "_fl_H1", "_fl_CK", "_fl_rt")])
    if single_device:
        dev_src = "    _fl_dev = 0\n    _fl_e = _fl_cache.get(_fl_k)\n"
    else:
        dev_src = ("    _fl_dev = _fl_getdev()\n"
                   "    _fl_e = _fl_caches.get(_fl_dev, _fl_EMPTY).get(_fl_k)\n")

    grid_src = [
        "    if _fl_grid.__class__ is not tuple and callable(_fl_grid):",
        f"        _fl_grid = _fl_grid({meta_dict})",
        "    _fl_gl = len(_fl_grid)",
    ]
    if native:
        slot_args = "".join(f", {n}" for n in names + opts)
        dev0 = "0" if single_device else "_fl_getdev()"
        head = [
            "    if _fl_jit.used_global_vals:",
            "        _fl_check_globals()",
            "    if _fl_grid.__class__ is not tuple:",
            f"        _fl_grid = tuple(_fl_grid({meta_dict}) if callable(_fl_grid) else _fl_grid)",
            "    if not _fl_opts:",
            f"        _fl_d0 = {dev0}",
            "        _fl_r = _fl_natlaunch(_fl_nat, _fl_grid, _fl_stream(_fl_d0), _fl_d0"
            f"{slot_args})",
            "        if _fl_r is not NotImplemented:",
            "            return _fl_r",
            "    _fl_gl = len(_fl_grid)",
            f"    _fl_k = {key_src}",
            dev_src.rstrip("\n"),
            "    if _fl_e is None:",
            f"        return _fl_miss(_fl_grid, _fl_k, _fl_dev, {args_tuple}, {kw_src})",
            "    _fl_hit()",
        ]
    else:
        head = [
            f"    _fl_k = {key_src}",
            dev_src.rstrip("\n"),
            "    if _fl_e is None:",
            f"        return _fl_miss(_fl_grid, _fl_k, _fl_dev, {args_tuple}, {kw_src})",
            "    if _fl_jit.used_global_vals:",
            "        _fl_check_globals()",
            "    _fl_hit()",
            *grid_src,
        ]
    ns["_fl_tier"] = "native" if native else "lean" if lean else "python"
    tier = ", native C key + launch" if native else ", lean C launch" if lean else ""
    lines = [
        f"# fast_launch for {getattr(jit.fn, '__qualname__', '?')} "
        f"(Triton {adapter.version[0]}.{adapter.version[1]}, "
        f"{'inline CUDA keys' if inline else 'Triton specialisation helpers'}{tier})",
        f"def _fl_launch(_fl_grid, {params_src}):",
        f"    if {guard}:",
        f"        return _fl_plain(_fl_grid, {args_tuple}, {kw_src})",
        *head,
    ] + ([
        "    _fl_run, _fl_fn, _fl_md, _fl_coop, _fl_pdl, _fl_kernel = _fl_e",
        "    _fl_run(_fl_grid[0], _fl_grid[1] if _fl_gl > 1 else 1, "
        "_fl_grid[2] if _fl_gl > 2 else 1,",
        "            _fl_stream(_fl_dev), _fl_fn, _fl_coop, _fl_pdl, None, None, _fl_md,",
        f"            None, None, None{launch_args})",
    ] if lean else [
        "    _fl_run, _fl_fn, _fl_md, _fl_kernel = _fl_e",
        "    _fl_run(_fl_grid[0], _fl_grid[1] if _fl_gl > 1 else 1, "
        "_fl_grid[2] if _fl_gl > 2 else 1,",
        f"            _fl_stream(_fl_dev), _fl_fn, _fl_md, None, None, None{launch_args})",
    ]) + [
        "    return _fl_kernel",
        "",
        "",
        f"def _fl_key({params_src}):",
        f"    return {key_src}",
        "",
        "",
        f"def _fl_kw(_fl_opts{''.join(', ' + o for o in opts)}):",
        "    _fl_d = {}",
    ]
    for o in opts:
        lines.append(f"    if {o} is not _fl_NS:")
        lines.append(f"        _fl_d[{o!r}] = {o}")
    lines += [
        "    _fl_d.update(_fl_opts)",
        "    return _fl_d",
        "",
        "",
        *_ready_src("_fl_ready", guard),
        *_ready_src("_fl_ready_local", local_guard),
        "def _fl_state():",
        "    return (" + "".join(f"{e}, " for e in adapter.state_exprs) + ")",
        "",
        "",
        "def _fl_entry(kernel):",
        "    return (*_fl_launch_entry(kernel), kernel)",
        "",
    ]
    return "\n".join(lines), ns


def _ready_src(name: str, guard: str) -> list[str]:
    """Source lines of a guard function ``name()``: False where ``guard`` holds."""
    return [
        f"def {name}():",
        f"    if {guard}:",
        "        return False",
        "    if _fl_jit.used_global_vals:",
        "        _fl_check_globals()",
        "    return True",
        "",
        "",
    ]


def _native_table(jit: Any, plan: Any, opts: list[str], ns: dict[str, Any]) -> bool:
    """Create the kernel's native key / variant table in ``ns``; False if it cannot be."""
    from . import native

    codes = native.slot_codes(plan, opts)
    if codes is None:
        return False
    try:
        mod = native.load()
    except native.NativeUnavailable:
        return False
    ns["_fl_nat"] = mod.fl_new(codes, len(plan.params), native.torch_dtypes(),
                               native.tensor_types(), NOT_SET, native.desc_types())
    ns["_fl_natlaunch"] = mod.fl_launch
    ns["_fl_natkey"] = mod.fl_key
    ns["_fl_natgroup"] = mod.fl_launch_group
    ns["_fl_natreg"] = mod.fl_register
    ns["_fl_nat_slots"] = tuple(opts)
    return True
