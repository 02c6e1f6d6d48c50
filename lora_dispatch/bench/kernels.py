"""Kernel benchmark: shrink, expand, fused qkv / gate_up expand and add_lora.

For each row: GPU time (``do_bench`` median, L2 flushed), CUDA-graph replay time per call
(rotating over several weight / input sets so the graph does not run out of L2), host time
per eager call, achieved GB/s from the minimal bytes (``x`` once, each used adapter's
weights once at its real rank, the output written once and read too when adding) and the
percentage of the device-to-device copy bandwidth measured in the same run. Prefill rows
(T > 256) also time a copy that moves their own minimal bytes (``size_copy_us``, events like
``gpu_us``) and give the op's speed as a percentage of that copy's (``pct_size_copy``: 100
means the op is as fast as copying its bytes, launch and ramp-up included). A few rows
repeat with the reference backend.

Run ``python benchmarks/bench_kernels.py`` (``--quick`` for a handful of small rows that
also work on the CPU under ``TRITON_INTERPRET=1``; ``--json PATH`` to choose the output).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch

from .timing import (
    copy_bandwidth_gbs,
    env_record,
    format_table,
    gpu_time_us,
    graph_time_us,
    host_time_us,
    pct_of_copy,
    profiler_used,
    result_path,
    write_json,
)

__all__ = ["main", "run", "LAYERS"]

LAYERS = {
    "shrink": (4096,),
    "expand": (4096,),
    "qkv_expand": (4096, 1024, 1024),
    "gate_up_expand": (14336, 14336),
    "add_lora": (4096, 1024, 1024),
}
DECODE_T = (1, 16, 64, 256)
PREFILL_T = (2048, 8192)
COLUMNS = ("op", "backend", "dtype", "T", "rank", "adapters", "gpu_us", "graph_us", "host_us",
           "gbs", "pct_copy", "kernel_us", "pct_copy_kernel", "pct_size_copy", "path")


@dataclass
class Problem:
    op: str
    hidden: int
    t: int
    rank: int
    adapters: int
    dtype: torch.dtype
    device: torch.device
    outs: tuple[int, ...] | None = None  # the slices' widths; default: LAYERS[op] scaled


def _outs(p: Problem) -> tuple[int, ...]:
    if p.outs is not None:
        return p.outs
    return tuple(o * p.hidden // 4096 for o in LAYERS[p.op])


def _slots(p: Problem) -> list[int]:
    if p.t <= max(DECODE_T):
        return [i % p.adapters for i in range(p.t)]
    per = -(-p.t // p.adapters)
    return [min(i // per, p.adapters - 1) for i in range(p.t)]


def min_bytes(p: Problem) -> int:
    """Fewest bytes the op must move (see the module docstring)."""
    outs = _outs(p)
    s, n = len(outs), sum(outs)
    e = torch.tensor([], dtype=p.dtype).element_size()
    used = min(p.adapters, p.t)
    x = p.t * p.hidden * e
    a = used * s * p.rank * p.hidden * e
    b = used * n * p.rank * e
    y = p.t * s * p.rank * 4
    out = 2 * p.t * n * e
    if p.op == "shrink":
        return x + a + y
    if p.op == "add_lora":
        return x + a + b + out
    return y + b + out


def _build(p: Problem, sets: int):
    import lora_dispatch as ld

    outs = _outs(p)
    slots = _slots(p)
    batch = ld.LoRABatch.from_segments([1] * len(slots), slots, device=p.device)
    g = torch.Generator(device=p.device).manual_seed(0)
    items = []
    for _ in range(sets):
        w = ld.LoRAWeights(p.adapters, p.hidden, outs, p.rank, dtype=p.dtype, device=p.device)
        for s in range(p.adapters):
            a = torch.randn(len(outs) * p.rank, p.hidden, generator=g, device=p.device)
            a = list((a / p.hidden**0.5).split(p.rank))
            b = torch.randn(sum(outs), p.rank, generator=g, device=p.device) / p.rank**0.5
            w.load(s, a, list(b.split(list(outs))), 0.5)
        x = torch.randn(p.t, p.hidden, generator=g, device=p.device).to(p.dtype)
        y = torch.randn(len(outs), p.t, p.rank, generator=g, device=p.device)
        out = torch.randn(p.t, sum(outs), generator=g, device=p.device).to(p.dtype)
        items.append((w, x, y, out))
    return batch, items


class ExpandCase(NamedTuple):
    """One input set of an expand-type shape, with the config the registry ships for it."""

    problem: Problem
    batch: object  # LoRABatch
    w: object  # LoRAWeights
    y4: torch.Tensor  # [1, S, T, R] float32, one partial product
    out: torch.Tensor  # [T, sum(out_features)]
    default: object  # ExpandConfig
    nbytes: int


def expand_case(spec: str, device: torch.device) -> ExpandCase:
    """``op:T:rank`` (bf16, hidden 4096, 4 adapters) as one input set for expand sweeps and
    probes: batch, weights, ``y`` as one partial product, ``out``, the shipped
    :func:`~lora_dispatch.devices.configs.expand_config` and :func:`min_bytes`."""
    from ..devices import configs, current

    op, t, rank = spec.split(":")
    p = Problem(op, 4096, int(t), int(rank), 4, torch.bfloat16, device)
    batch, items = _build(p, 1)
    w, _, y, out = items[0]
    default = configs.expand_config(current(device), p.t, w.total_out, w.max_rank, 2,
                                     widths=tuple(w.out_features))
    return ExpandCase(p, batch, w, y.unsqueeze(0), out, default, min_bytes(p))


def checked_time(launch: Callable[[torch.Tensor], object], out: torch.Tensor,
                 pristine: torch.Tensor, ref: torch.Tensor, device: torch.device,
                 check: bool = True, what: str = "") -> tuple[float | None, float] | None:
    """``(max |launch(copy of pristine) - ref|, cold-L2 µs of launch(out))`` for an expand
    probe variant (the difference ``None`` with ``check=False``; µs NaN on the CPU, where the
    call is a checked smoke run), or ``None`` after printing why when it fails to build."""
    err = None
    try:
        if check:
            chk = pristine.clone()
            launch(chk)
            err = (chk.float() - ref.float()).abs().max().item()
        us = (gpu_time_us(lambda: launch(out), device, warmup_ms=5, rep_ms=20)
              if device.type == "cuda" else float("nan"))
    except Exception as exc:  # a variant that fails to compile is reported and skipped
        print(f"{what} failed: {exc!r}"[:300], flush=True)
        return None
    return err, us


def shipped_expand_row(spec: str, case: ExpandCase, device: torch.device, copy: float | None,
                       rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Time the shipped expand of an :func:`expand_case` into ``case.out`` (cold L2), append
    its row to ``rows`` and print it; return ``(pristine, ref)``: a copy of ``out`` before
    any run and the shipped result on it, for checking probe variants."""
    from lora_dispatch.kernels.triton import launch as L

    p, batch, w, y4, out, default, nbytes = case
    pristine = out.clone()
    ref = out.clone()
    plan = L._expand_plan(w, p.t, 1, cfg=default)
    L._launch_expand(plan, y4, w, batch, ref, p.t)
    _, us = checked_time(lambda o: L._launch_expand(plan, y4, w, batch, o, p.t), out,
                         pristine, ref, device, False, "shipped")
    gbs = nbytes / (us * 1e-6) / 1e9
    pct = 100 * gbs / copy if copy else float("nan")
    rows.append(dict(kind="shipped", op=p.op, T=p.t, rank=p.rank, us=us, gbs=gbs,
                     pct_copy=pct, **default.__dict__))
    print(f"{spec:>22} shipped {default}: {us:7.1f} us {pct:5.1f}%", flush=True)
    return pristine, ref


def add_shrink_launch(t: int, rank: int, device: torch.device, hidden: int = 4096,
                      adapters: int = 4):
    """The qkv shrink exactly as ``add_lora`` launches it inside a CUDA graph (workspace mode,
    bf16, ``adapters`` slots over ``t`` tokens; the Gluon kernel where the registry picks
    it): ``(launch, plan)``, ``launch()`` running it once."""
    from lora_dispatch.kernels.triton import launch as L

    p = Problem("add_lora", hidden, t, rank, adapters, torch.bfloat16, device)
    batch, items = _build(p, 1)
    w, x, _, _ = items[0]
    plan = L._pick(L.plan_for("add", w, t), x, w, capturing=True).shrink
    ws = torch.empty((plan.split, w.num_slices, t, w.max_rank), device=device)
    return (lambda: L._launch_shrink(plan, x, w, batch, ws, t)), plan


def partials_time(launch: Callable[[], object], y: torch.Tensor, ref: torch.Tensor,
                  device: torch.device, what: str, tol: float = 1e-2) -> float | None:
    """Cold-L2 µs of a dense shrink probe whose ``launch`` writes K-split partial products
    ``y [split, T, N]`` (NaN on the CPU, where the call is a checked smoke run); ``None``
    after printing why when it fails to build, or when the partials, poisoned with NaN
    first, do not sum to ``ref [T, N]`` within ``tol`` (relative norm)."""
    try:
        y.fill_(float("nan"))
        launch()
        err = ((y.sum(0) - ref).norm() / ref.norm()).item()
        if not err < tol:
            print(f"{what}: wrong result (rel {err:.3g})", flush=True)
            return None
        return (gpu_time_us(launch, device, warmup_ms=5, rep_ms=20)
                if device.type == "cuda" else float("nan"))
    except Exception as exc:  # a variant that fails to build is reported and skipped
        print(f"{what} failed: {exc!r}"[:300], flush=True)
        return None


class DenseShrinkLog:
    """Rows of a dense ``x [T, K] @ A^T`` probe: percent of copy bandwidth from the minimal
    bytes (``x`` and ``A`` once, float32 ``y`` once per K split), printed and, with a
    ``path``, written after every row so a run cut short still reports."""

    def __init__(self, path: str | None, device: torch.device, copy_gbs: float) -> None:
        self.path, self.device, self.copy, self.rows = path, device, copy_gbs, []

    def add(self, kind: str, cfg: Any, us: float, t: int, n: int, k: int, split: int = 1,
            **extra: Any) -> dict:
        nbytes = t * k * 2 + n * k * 2 + t * n * 4 * split
        row = dict(kind=kind, T=t, N=n, cfg=cfg, us=round(us, 2),
                   pct_copy=round(pct_of_copy(nbytes, us, self.copy), 1), **extra)
        self.rows.append(row)
        print(row, flush=True)
        if self.path:
            write_json(self.path, {**env_record(self.device), "copy_gbs": self.copy},
                       self.rows)
        return row


def round_median(rows: list[dict], key: str, **match: Any) -> float:
    """Median of ``key`` over the rows (alternating rounds of a probe) matching ``match``."""
    v = sorted(r[key] for r in rows if all(r[k] == x for k, x in match.items()))
    return v[len(v) // 2]


def probe_main(argv: list[str] | None, doc: str, shapes: str,
               shape_fn: Callable[[str, torch.device, float | None, list[dict],
                                   argparse.Namespace], None],
               extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
               before: Callable[..., None] | None = None) -> int:
    """``main`` of a probe: ``--json``, ``--shapes`` (comma list, default ``shapes``; each
    item's format is ``shape_fn``'s, e.g. ``op:T:rank``) and ``--device``; prints the 1 GiB
    copy bandwidth, calls ``shape_fn(spec, device, copy_gbs, rows, args)`` per shape (after
    ``before(args, device, copy_gbs, rows)``) and writes the rows with the device, versions
    and commit."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=shapes)
    ap.add_argument("--device", default="cuda")
    if extra_args is not None:
        extra_args(ap)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    copy = copy_bandwidth_gbs(dev)
    print(f"copy bandwidth (1 GiB) {copy:.0f} GB/s" if copy else "no copy bandwidth (CPU)",
          flush=True)
    rows: list[dict] = []
    if before is not None:
        before(args, dev, copy, rows)
    for spec in args.shapes.split(","):
        shape_fn(spec, dev, copy, rows, args)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


def _call(p: Problem, impl, batch, item) -> Callable[[], object]:
    """The op of ``p`` on one input set through a backend module (``shrink`` / ``expand`` /
    ``add_lora`` functions)."""
    w, x, y, out = item
    if p.op == "shrink":
        return lambda: impl.shrink(x, w, batch)
    if p.op == "add_lora":
        return lambda: impl.add_lora(out, x, w, batch)
    return lambda: impl.expand(y, w, batch, out)


def _public(p: Problem, batch, item) -> Callable[[], object]:
    """:func:`_call` through the public ops (same signatures as the backend functions)."""
    import lora_dispatch as ld

    ops = SimpleNamespace(shrink=ld.lora_shrink, expand=ld.lora_expand, add_lora=ld.add_lora)
    return _call(p, ops, batch, item)


def _cycle(fns: list[Callable[[], object]]) -> Callable[[], object]:
    it = itertools.cycle(fns)
    return lambda: next(it)()


def host_us(p: Problem, backend: str, batch=None, item=None) -> float:
    """Host µs per call of ``p``: the public op for the Triton backend (forced by
    ``LORA_DISPATCH_BACKEND``), the backend function otherwise (:func:`host_time_us`)."""
    import importlib

    if batch is None:
        batch, (item,) = _build(p, 1)
    on_gpu = p.device.type == "cuda"
    if backend != "triton":
        impl = importlib.import_module(f"lora_dispatch.kernels.{backend}")
        return host_time_us(_call(p, impl, batch, item), p.device, n=20 if on_gpu else 2,
                            rounds=3 if on_gpu else 1)
    from lora_dispatch import devices

    prev = os.environ.get("LORA_DISPATCH_BACKEND")
    os.environ["LORA_DISPATCH_BACKEND"] = "triton"
    devices.reset()
    try:
        return host_time_us(_public(p, batch, item), p.device, n=100 if on_gpu else 3,
                            rounds=5 if on_gpu else 1)
    finally:
        if prev is None:
            os.environ.pop("LORA_DISPATCH_BACKEND", None)
        else:
            os.environ["LORA_DISPATCH_BACKEND"] = prev
        devices.reset()


def measure(p: Problem, backend: str, copy_bw: float | None, sets: int,
            copy_bw_kernel: float | None = None, host: float | None = None) -> dict:
    """One benchmark row. ``copy_bw_kernel``: the copy bandwidth timed by the profiler, for
    ``pct_copy_kernel`` (the row's own kernel time, ``kernel_us``, over the same ruler).
    ``host``: the row's host µs taken earlier (:func:`host_us`, before the profiler ran in
    this process); timed here after the GPU columns otherwise."""
    import importlib

    impl = importlib.import_module(f"lora_dispatch.kernels.{backend}")
    batch, items = _build(p, sets)
    fns = [_call(p, impl, batch, it) for it in items]
    on_gpu = p.device.type == "cuda"
    dob = kern = None
    if on_gpu:
        gpu = gpu_time_us(fns[0], p.device, warmup_ms=10, rep_ms=40)
        dob = gpu_time_us(fns[0], p.device, warmup_ms=10, rep_ms=40, method="do_bench")
        kern = gpu_time_us(fns[0], p.device, method="kernel")
    else:
        gpu = host_time_us(fns[0], p.device, n=1, rounds=3, sync_each=True)
    graph = graph_time_us(_cycle(fns), p.device, inner=max(sets, 20), reps=20) if on_gpu else None
    if host is None:
        host = host_us(p, backend, batch, items[0])
    nbytes = min_bytes(p)
    gbs = nbytes / (gpu * 1e-6) / 1e9
    size_copy = size_copy_us(nbytes, p.device) if on_gpu and p.t > 256 else None
    path = None
    if backend == "triton" and p.op in ("add_lora", "shrink"):
        from lora_dispatch.kernels.triton import launch as L

        w, x = items[0][0], items[0][1]
        if p.op == "add_lora":
            plan = L._pick(impl.plan_for("add", w, p.t), x, w, capturing=True)
            sp = plan.shrink
            path = "fused" if plan.fused is not None else f"2pass/split{sp.split}"
        else:
            sp = L._pick(impl.plan_for("shrink", w, p.t), x, w, capturing=True)
            path = f"split{sp.split}"
        if sp is not None:  # the shrink kernel (the Gluon one eager where launched natively)
            eager = sp.gluon is not None and L.gluon_native() and not sp.gluon.graph_only
            path += ("", "/tma", "/gluon" if eager else "/gluon-in-graphs")[
                L._desc_kind(sp, x, w)]
    return {
        "op": p.op, "backend": backend, "dtype": str(p.dtype).replace("torch.", ""),
        "hidden": p.hidden, "out_features": list(_outs(p)), "T": p.t, "rank": p.rank,
        "adapters": p.adapters, "gpu_us": gpu, "graph_us": graph, "host_us": host,
        "bytes": nbytes, "gbs": gbs, "pct_copy": 100 * gbs / copy_bw if copy_bw else None,
        "gpu_us_do_bench": dob,
        "pct_copy_do_bench": pct_of_copy(nbytes, dob, copy_bw),
        "kernel_us": kern,
        "pct_copy_kernel": pct_of_copy(nbytes, kern, copy_bw_kernel),
        "path": path,
        "size_copy_us": size_copy,
        "pct_size_copy": 100 * size_copy / gpu if size_copy else None,
    }


_SIZE_COPY: dict[tuple[int, str], float] = {}


def size_copy_us(nbytes: int, device: torch.device) -> float:
    """GPU µs (:func:`gpu_time_us`'s default method, as ``gpu_us``) of a device-to-device
    copy that moves ``nbytes`` in all (``nbytes / 2`` read, as many written): the copy's own
    time at a row's size, which launch and ramp-up weigh on at small sizes where the 1 GiB
    copy bandwidth does not (memoized per size and device)."""
    key = (nbytes, str(device))
    us = _SIZE_COPY.get(key)
    if us is None:
        gbs = copy_bandwidth_gbs(device, nbytes // 2, warmup_ms=10, rep_ms=40)
        us = _SIZE_COPY[key] = nbytes / gbs / 1e3
    return us


def problems(quick: bool, device: torch.device, tokens: tuple[int, ...] | None = None,
             ops: tuple[str, ...] | None = None) -> list[tuple[Problem, str]]:
    """(problem, backend) pairs of the sweep; ``tokens`` / ``ops`` narrow the full sweep
    (Triton rows only)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float16
    if quick:
        hidden = 4096 if device.type == "cuda" else 128
        rows = []
        for op in LAYERS:
            for t in ((16, 2048) if device.type == "cuda" else (4,)):
                rows.append((Problem(op, hidden, t, 16, 4, dtype, device), "triton"))
        rows.append((Problem("add_lora", hidden, 4, 16, 4, dtype, device), "reference"))
        return rows
    rows = []
    for op, rank, adapters, t in itertools.product(ops or LAYERS, (16, 64), (1, 4, 16),
                                                   tokens or DECODE_T + PREFILL_T):
        rows.append((Problem(op, 4096, t, rank, adapters, dtype, device), "triton"))
    if tokens or ops:
        return rows
    for op, t in itertools.product(LAYERS, (16, 2048)):
        rows.append((Problem(op, 4096, t, 16, 4, dtype, device), "reference"))
    return rows


def run(quick: bool = False, device: torch.device | None = None,
        log: Callable[[str], None] = print, json_path: str | None = None,
        tokens: tuple[int, ...] | None = None, ops: tuple[str, ...] | None = None,
        ) -> tuple[dict, list[dict]]:
    """Run the sweep; returns (meta, rows). With ``json_path``, rewrites it after each row.
    ``tokens`` / ``ops`` narrow it (no reference rows, no host breakdown).

    On CUDA every host column (and the host breakdown) is timed first, before the
    profiler's kernel times: ``meta["host_before_profiler"]`` says whether this process had
    run the profiler before that (:func:`~lora_dispatch.bench.timing.profiler_used`).
    """
    if device is None:
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    todo = problems(quick, device, tokens, ops)
    full = device.type == "cuda" and not quick and not (tokens or ops)
    breakdown: list[dict] = []
    hosts: dict[int, float] = {}
    meta = env_record(device)
    meta["quick"] = quick
    meta["host_before_profiler"] = not profiler_used()
    if device.type == "cuda":  # host columns first: the profiler's CUPTI slows later launches
        if full:
            breakdown = host_breakdown(device, log)
        for i, (p, backend) in enumerate(todo):
            with contextlib.suppress(Exception):  # measure() records the failure
                hosts[i] = host_us(p, backend)
    meta["copy_gbs"] = copy_bw = copy_bandwidth_gbs(device)
    meta["copy_gbs_kernel"] = copy_bw_kernel = copy_bandwidth_gbs(device, method="kernel")
    rows = []
    for i, (p, backend) in enumerate(todo):
        sets = 1 if device.type != "cuda" else max(1, min(8, (64 << 20) // max(min_bytes(p), 1)))
        try:
            row = measure(p, backend, copy_bw, sets, copy_bw_kernel, hosts.get(i))
        except Exception as exc:  # keep the sweep going; the row records the failure
            row = {"op": p.op, "backend": backend, "T": p.t, "rank": p.rank,
                   "adapters": p.adapters, "error": repr(exc)[:300]}
        rows.append(row)
        log(format_table([row], COLUMNS).splitlines()[-1])
        if json_path:
            write_json(json_path, meta, rows)
    if full:
        rows.extend(breakdown)
        if json_path:
            write_json(json_path, meta, rows)
    return meta, rows


def _group_c_split(group, grids: tuple, slots: tuple, device: torch.device,
                   reps: int = 200, rounds: int = 7,
                   bound: tuple | None = None) -> list[tuple[str, float]]:
    """The launch group's native call split in two, timed inside C (``fl_time_group``):
    keys and table lookups of both calls, then the parameter packing and the two driver
    launches; µs per call, median of ``rounds`` (``reps`` calls each, the GPU drained before
    each round so the launch queue never fills). ``bound``: ``(bound, values)`` of
    ``LaunchGroup.bind`` also timed through ``fl_time_bound`` (only the per-call slots keyed)."""
    from ..launchers import native

    mod = native.load()
    time_group = getattr(mod, "fl_time_group", None)
    state = group._refresh()
    if time_group is None or state is None:
        return []
    nats, stream, getdev = state[0], state[2], state[3]
    dev = 0 if getdev is None else getdev()
    calls = {"group": lambda: time_group(reps, nats, grids, stream(dev), dev, *slots)}
    if bound is not None and getattr(mod, "fl_time_bound", None) is not None:
        calls["bound group"] = lambda: mod.fl_time_bound(reps, bound[0], nats, grids,
                                                         stream(dev), dev, *bound[1])
    out = []
    for name, call in calls.items():
        prep, drv = [], []
        for _ in range(rounds):
            torch.cuda.synchronize(device)
            r = call()
            if r is None:
                break
            prep.append(r[0] / 1e3)
            drv.append(r[1] / 1e3)
        torch.cuda.synchronize(device)
        if prep:
            out += [(f"{name}: C keys + lookups", statistics.median(prep)),
                    (f"{name}: packing + driver", statistics.median(drv))]
    return out


def host_breakdown(device: torch.device, log: Callable[[str], None] = print,
                   tokens: tuple[int, ...] = (16,)) -> list[dict]:
    """Host time of one eager ``add_lora`` (qkv, rank 16, 4 adapters), layer by layer.

    Each part peels one layer off the call: the public op (validation + dispatch), the
    backend function, the two-pass body (workspace + argument assembly + launches), both
    launches with pre-assembled arguments (as one launch group, and as two launches), one
    launch alone, and the validation and workspace lookup by themselves; ``add_lora``'s armed
    per-call path alone (``launch._arm_hot``); then the two-pass body with the group against
    two separate launches, in alternating rounds. Differences
    between parts are the cost of each layer.
    """
    import lora_dispatch as ld
    from lora_dispatch import ops
    from lora_dispatch.kernels.triton import launch as L

    rows = []
    for t in tokens:
        p = Problem("add_lora", 4096, t, 16, 4, torch.bfloat16, device)
        batch, items = _build(p, 1)
        w, x, _, out = items[0]
        impl = ops._impl(w)
        plan = L.plan_for("add", w, t)
        sp, ep = plan.shrink, plan.expand
        numel, ys = plan.ws_numel, plan.ys
        ws = L._workspace(numel, x)
        sargs = (*L._shrink_args(sp, x, x.stride(), w, batch, ws, t, ys), *sp.cx)
        eargs = (*L._expand_args(ep, ws, w, batch, out, out.stride(), t, ys), *ep.cx)
        sk, ek = L.shrink_kernel, L.expand_kernel

        def one_launch(sk=sk, sp=sp, sargs=sargs):
            sk[sp.grid](*sargs, num_warps=sp.num_warps, num_stages=sp.num_stages)

        def two_launches(one_launch=one_launch, ek=ek, ep=ep, eargs=eargs):
            one_launch()
            ek[ep.grid](*eargs, num_warps=ep.num_warps, num_stages=ep.num_stages)

        def separate(sp=sp, ep=ep, x=x, w=w, b=batch, ws=ws, out=out, t=t, ys=ys):
            L._launch_shrink(sp, x, w, b, ws, t, ys)
            L._launch_expand(ep, ws, w, b, out, t, ys)

        group = L._GROUP
        gslots = (*sargs, *sp.tail[len(sp.cx):], *eargs, *ep.tail[len(ep.cx):])
        parts = {
            "public ld.add_lora": lambda out=out, x=x, w=w, b=batch: ld.add_lora(out, x, w, b),
            "backend add_lora": lambda out=out, x=x, w=w, b=batch, impl=impl:
                impl.add_lora(out, x, w, b),
            "two-pass body": lambda plan=plan, out=out, x=x, w=w, b=batch, t=t:
                L._two_pass(plan, out, x, w, b, t),
            "launch group (both)": lambda group=group, g=(sp.grid, ep.grid), s=gslots:
                group(g, s),
            "two launches": two_launches,
            "one launch": one_launch,
            "validation (_fast_ok)": lambda out=out, x=x, w=w, b=batch: ops._fast_ok(out, x, w, b),
            "workspace lookup": lambda numel=numel, x=x: L._workspace(numel, x),
        }
        separate()  # builds both launchers (and their native tables) before the check
        if group is None or not group.native:
            parts.pop("launch group (both)")
        for name, fn in parts.items():
            us = host_time_us(fn, device, n=400)
            rows.append({"op": "host_breakdown", "backend": "triton", "part": name, "T": t,
                         "tier": getattr(sk, "launch_tier", "?"), "host_us": us})
            log(f"host T={t:5d} {name:28s} {us:6.2f} us")
        hot = plan.memo[5]  # add_lora's armed per-call path (launch._arm_hot), if any
        if hot is not None and hot(out, x, w, batch):
            us = host_time_us(lambda hot=hot, out=out, x=x, w=w, b=batch: hot(out, x, w, b),
                              device, n=400)
            rows.append({"op": "host_breakdown", "backend": "triton",
                         "part": "per-call path (armed)", "T": t,
                         "tier": getattr(sk, "launch_tier", "?"), "host_us": us})
            log(f"host T={t:5d} {'per-call path (armed)':28s} {us:6.2f} us")
        if "launch group (both)" in parts:
            e0 = len(sargs) + len(sp.tail) - len(sp.cx)  # the expand's first slot
            varying = (L._S_X, *range(L._S_XS.start, L._S_XS.stop), e0 + L._E_OUT,
                       *range(e0 + L._E_OS.start, e0 + L._E_OS.stop))
            bslots = tuple(None if i in varying else v for i, v in enumerate(gslots))
            bound = (group.bind(bslots, varying), tuple(gslots[i] for i in varying))
            if bound[0] is not None:
                parts["bound launch group (both)"] = (
                    lambda group=group, g=(sp.grid, ep.grid), b=bound:
                    group.launch_bound(b[0], g, b[1]))
                us = host_time_us(parts["bound launch group (both)"], device, n=400)
                rows.append({"op": "host_breakdown", "backend": "triton",
                             "part": "bound launch group (both)", "T": t,
                             "tier": getattr(sk, "launch_tier", "?"), "host_us": us})
                log(f"host T={t:5d} {'bound launch group (both)':28s} {us:6.2f} us")
            for name, us in _group_c_split(group, (sp.grid, ep.grid), gslots, device,
                                           bound=bound if bound[0] is not None else None):
                rows.append({"op": "host_breakdown", "backend": "triton", "part": name, "T": t,
                             "tier": getattr(sk, "launch_tier", "?"), "host_us": us})
                log(f"host T={t:5d} {name:28s} {us:6.2f} us")
        if "launch group (both)" in parts:  # A/B in alternating rounds: min of medians
            ab = {"A/B two-pass body, group": parts["two-pass body"],
                  "A/B two-pass body, separate": separate}
            best = {name: host_time_us(fn, device, n=200, rounds=3) for name, fn in ab.items()}
            for _ in range(4):
                for name, fn in ab.items():
                    best[name] = min(best[name], host_time_us(fn, device, n=200, rounds=3))
            for name, us in best.items():
                rows.append({"op": "host_breakdown", "backend": "triton", "part": name,
                             "T": t, "tier": getattr(sk, "launch_tier", "?"), "host_us": us})
                log(f"host T={t:5d} {name:28s} {us:6.2f} us")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a handful of small rows (CPU ok)")
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/...)")
    ap.add_argument("--tune", action="store_true", help="time candidate configs instead")
    ap.add_argument("--tokens", default=None, help="comma list of T instead of the default")
    ap.add_argument("--ops", default=None, help=f"comma list of {', '.join(LAYERS)}")
    args = ap.parse_args(argv)
    tokens = tuple(int(v) for v in args.tokens.split(",")) if args.tokens else None
    ops = tuple(args.ops.split(",")) if args.ops else None
    if ops and not set(ops) <= set(LAYERS):
        ap.error(f"--ops must name ops of {sorted(LAYERS)}, got {args.ops!r}")
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    path = args.json or result_path("kernels", env_record(device)["device"])
    if args.tune:
        rows = tune(device)
        print(f"wrote {write_json(args.json or 'tune.json', env_record(device), rows)}")
        return 0
    print(format_table([], COLUMNS))
    meta, rows = run(quick=args.quick, device=device, json_path=str(path), tokens=tokens,
                     ops=ops)
    print()
    print(format_table(rows, COLUMNS))
    if meta.get("copy_gbs"):
        print(f"device-to-device copy: {meta['copy_gbs']:.0f} GB/s")
    print(f"wrote {write_json(path, meta, rows)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


# ----------------------------------------------------------------------------- tuning
_SHRINK_DECODE = [  # BM, BK, split, warps, stages
    (16, 128, 16, 4, 4), (16, 64, 32, 4, 4), (16, 256, 8, 4, 3), (16, 128, 32, 4, 4),
]
_SHRINK_PREFILL = [
    (64, 128, 1, 4, 4), (16, 512, 1, 4, 3), (16, 1024, 1, 8, 2), (32, 512, 1, 8, 3),
    (64, 256, 1, 8, 4), (32, 256, 1, 4, 4), (16, 256, 1, 4, 5), (64, 512, 1, 8, 2),
]
_EXPAND_PREFILL = [  # BM, BN, warps, stages, col_blocks
    (128, 64, 4, 1, 1), (128, 64, 4, 2, 2), (128, 64, 4, 3, 4), (64, 128, 4, 2, 4),
    (64, 64, 4, 3, 8), (32, 128, 4, 3, 4), (128, 128, 8, 2, 2), (64, 128, 4, 3, 8),
]
_EXPAND_DECODE = [(16, 64, 4, 1, 1), (16, 64, 4, 2, 4), (16, 128, 4, 2, 2), (16, 32, 4, 2, 4)]
_FUSED: list[tuple[int, int, int, int]] = []


def tune(device: torch.device, log: Callable[[str], None] = print,
         hidden: int = 4096) -> list[dict]:
    """Time candidate configs of each kernel on a few key shapes (bf16, hidden 4096)."""
    from lora_dispatch.devices import configs as C
    from lora_dispatch.kernels.triton import launch as L

    dt = torch.bfloat16
    rows: list[dict] = []

    def record(kind, p, cfg, fn, graph=False):
        try:
            us = gpu_time_us(fn, device, warmup_ms=5, rep_ms=25)
            g = graph_time_us(fn, device, inner=20, reps=10) if graph else None
        except Exception as exc:  # a config that fails to compile is skipped
            us, g = None, None
            log(f"{kind} {cfg} failed: {exc!r}"[:200])
        gbs = min_bytes(p) / (us * 1e-6) / 1e9 if us else None
        row = {"kind": kind, "op": p.op, "T": p.t, "rank": p.rank, "adapters": p.adapters,
               "cfg": list(cfg), "gpu_us": us, "graph_us": g, "gbs": gbs}
        rows.append(row)
        log(f"{kind:14s} {p.op:14s} T={p.t:5d} r={p.rank:3d} {cfg} {us} {g} {gbs}")

    for t, rank in [(16, 16), (64, 16), (2048, 16), (8192, 16), (8192, 64)]:
        p = Problem("shrink", hidden, t, rank, 4, dt, device)
        batch, items = _build(p, 1)
        w, x, _, _ = items[0]
        cands = _SHRINK_DECODE if t <= 64 else _SHRINK_PREFILL
        for bm, bk, split, warps, stages in cands:
            cfg = C.ShrinkConfig(bm, max(16, min(64, C.next_pow2(w.num_slices * w.max_rank))),
                                 bk, split, warps, stages)
            for atomic in ((True, False) if t <= 64 else (True,)):
                plan = L._shrink_plan(w, t, atomic=atomic, cfg=cfg)
                alloc = torch.zeros if atomic else torch.empty

                def fn(plan=plan, w=w, x=x, batch=batch, t=t, alloc=alloc):
                    y = alloc((plan.split, w.num_slices, t, w.max_rank), device=device)
                    L._launch_shrink(plan, x, w, batch, y, t)

                record("shrink" if atomic else "shrink_ws", p, (bm, bk, split, warps, stages),
                       fn, graph=t <= 64)
    for op, t in [("expand", 2048), ("expand", 8192), ("gate_up_expand", 8192),
                  ("qkv_expand", 16), ("qkv_expand", 64)]:
        p = Problem(op, hidden, t, 16, 4, dt, device)
        batch, items = _build(p, 1)
        w, _, y, out = items[0]
        for bm, bn, warps, stages, ncol in (_EXPAND_DECODE if t <= 64 else _EXPAND_PREFILL):
            cfg = C.ExpandConfig(bm, bn, 16, warps, stages, ncol)
            plan = L._expand_plan(w, t, 1, cfg=cfg)
            y4 = y.unsqueeze(0)
            fn = (lambda plan=plan, y4=y4, w=w, batch=batch, out=out, t=t:
                  L._launch_expand(plan, y4, w, batch, out, t))
            record("expand", p, (bm, bn, warps, stages, ncol), fn, graph=t <= 64)
    for t in (1, 64, 256):
        p = Problem("add_lora", hidden, t, 16, 4, dt, device)
        batch, items = _build(p, 1)
        w, x, _, out = items[0]
        for bn, bk, warps, stages in _FUSED:
            plan = L._fused_plan(w, t, cfg=C.FusedConfig(16, bn, bk, warps, stages))
            fn = (lambda plan=plan, x=x, w=w, batch=batch, out=out, t=t:
                  L._fused(plan, out, x, w, batch, t))
            record("fused", p, (bn, bk, warps, stages), fn, graph=True)
        for split in (2, 4, 8, 16):
            plan = L.plan_for("add", w, t, "two_pass", split)
            fn = (lambda plan=plan, x=x, w=w, batch=batch, out=out, t=t:
                  L._two_pass(plan, out, x, w, batch, t))
            record("two_pass", p, (split,), fn, graph=True)
    return rows
