"""Timing primitives and result records for the benchmarks.

GPU time uses CUDA events (``triton.testing.do_bench``, median) or CUDA-graph replay; host
time is the median wall time of issuing calls back to back without synchronizing each one,
in rounds checked not to have waited on the GPU. On the CPU, GPU time falls back to
synchronous wall time.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "env_record",
    "copy_bandwidth_gbs",
    "pct_of_copy",
    "gpu_time_us",
    "kernel_spans_us",
    "call_activities",
    "graph_time_us",
    "host_time_us",
    "profiler_used",
    "result_path",
    "write_json",
    "format_table",
]


def _git_commit() -> str:
    """``LORA_DISPATCH_COMMIT`` if set (copies of the tree without their own history, such
    as a GPU machine's), else ``git rev-parse`` (``-dirty`` with uncommitted changes)."""
    env = os.environ.get("LORA_DISPATCH_COMMIT")
    if env:
        return env
    try:
        root = Path(__file__).resolve().parents[2]

        def git(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=5)

        out = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def env_record(device: torch.device | None = None) -> dict[str, Any]:
    """Device, versions, commit and date for a result file."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    dev = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
    return {
        "device": name,
        "device_type": dev.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "hip": torch.version.hip,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_FLUSH: dict[torch.device, torch.Tensor] = {}


def _flush_buffer(device: torch.device) -> torch.Tensor:
    buf = _FLUSH.get(device)
    if buf is None:
        buf = _FLUSH[device] = torch.ones(64 << 20, dtype=torch.float32, device=device)  # 256 MB
    return buf


def _evict(buf: torch.Tensor) -> torch.Tensor:
    """Read all of ``buf`` in one reduction kernel (replaces L2's contents with clean lines).

    Up to the ninth session this was ``int32_buf.sum(dtype=torch.int64)``, which first
    *writes* a 512 MB int64 copy (a separate cast kernel), so L2 still ended dirty.
    """
    return buf.sum()


_sleep = getattr(torch.cuda, "_sleep", None)


def _busy(us: float = 100.0) -> None:
    """Queue about ``us`` of spinning on the GPU (at ~2 GHz), so the host has queued the
    timed work before the GPU reaches the start event: host speed then cannot open gaps
    inside the timed interval (a slow host otherwise adds its launch time to small kernels,
    and a graph's launch time to its replay)."""
    if _sleep is not None:
        _sleep(int(us * 2000))


def gpu_time_us(fn: Callable[[], Any], device: torch.device, warmup_ms: float = 25,
                rep_ms: float = 100, method: str = "clean") -> float:
    """Median device time of ``fn`` in microseconds, with a cold L2 before each call.

    ``method="clean"`` (default) evicts L2 by *reading* a 256 MB buffer before each timed
    call, so the cache holds only clean lines, then queues ~100 µs of GPU spinning
    (:func:`_busy`) so the call is queued before its start event is reached. A call whose
    start event the GPU had already passed when the host finished issuing it (a host
    stall longer than the spin: its interval holds host time) is left out of the median;
    where that is more than half of them, the calls are timed again behind a 4x longer
    spin (up to ``_MAX_CALL_SPIN_US``; without this, single benchmark rows read 2-4x their
    time during such stretches).
    ``method="do_bench"`` uses ``triton.testing.do_bench``, whose flush *writes* 256 MB: the
    L2 is then full of dirty lines whose write-back is charged to the timed kernel, which
    understates read-heavy kernels (on an H200, a plain ``x.sum(1)`` over 64 MB reads at
    ~56% of the copy bandwidth that way). ``method="kernel"`` is :func:`kernel_spans_us`:
    the kernels' own time from the profiler, without the event and launch latency the
    other two include.
    """
    if device.type != "cuda":
        return host_time_us(lambda: fn(), device, n=20, sync_each=True)
    if method == "do_bench":
        from triton.testing import do_bench

        return 1e3 * do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    if method == "kernel":
        return statistics.median(kernel_spans_us(fn, device))
    if method != "clean":
        raise ValueError(f"method must be 'clean', 'kernel' or 'do_bench', got {method!r}")
    buf = _flush_buffer(device)
    fn()
    torch.cuda.synchronize(device)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    end.synchronize()
    est_ms = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / est_ms))):
        fn()
    n = max(5, min(1000, int(rep_ms / est_ms)))
    spin = _CALL_SPIN_US
    while True:
        timed = _timed_calls(fn, device, buf, n, spin)
        clean = [ms for ms, late in timed if not late]
        if 2 * len(clean) >= len(timed) or spin >= _MAX_CALL_SPIN_US:
            break
        spin, n = spin * 4, max(5, n // 4)
    return 1e3 * statistics.median(clean or [ms for ms, _ in timed])


_CALL_SPIN_US = 100.0  # GPU spinning queued before each event-timed call
_MAX_CALL_SPIN_US = 6400.0


def _timed_calls(fn: Callable[[], Any], device: torch.device, buf: torch.Tensor, n: int,
                 spin_us: float) -> list[tuple[float, bool]]:
    """``n`` calls of ``fn``, each after an L2 eviction and ``spin_us`` of GPU spinning,
    between CUDA events: (ms, whether the GPU had reached the start event before the host
    finished issuing the call and its end event) per call."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    late = []
    for i in range(n):
        _evict(buf)
        _busy(spin_us)
        starts[i].record()
        fn()
        ends[i].record()
        late.append(starts[i].query())
    torch.cuda.synchronize(device)
    return [(s.elapsed_time(e), lt) for s, e, lt in zip(starts, ends, late, strict=True)]


_EVICT_KERNELS: dict[torch.device, int] = {}


def _device_events(prof) -> list:
    """The profiler's device-side activities (kernels, memsets, copies), by start time."""
    evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    evs.sort(key=lambda e: e.time_range.start)
    return evs


_PROFILED = [False]  # kernel_spans_us ran in this process


def profiler_used() -> bool:
    """Whether this process has run the profiler (:func:`kernel_spans_us`). CUPTI stays
    attached after it: on an H200 with torch 2.11 every later launch took ~1 µs more host
    time (an eager ``add_lora``, two launches, 10.5 -> 12.4 µs), so host times are taken
    before it."""
    return _PROFILED[0]


def call_activities(fn: Callable[[], Any], device: torch.device, n: int = 20) -> list[list]:
    """The profiler's (CUPTI) device activities of each of ``n`` calls of ``fn``, each call
    after an L2 eviction and ~100 µs of GPU spinning (:func:`_busy`: the call's launches are
    all queued before the GPU reaches them, so a slow host opens no gap between a call's
    kernels), whose own activities are left out: one list per call, by start time.
    Host times taken after this in the same process carry the profiler's launch overhead
    (:func:`profiler_used`). ``fn`` must issue the same activities every call."""
    from torch.profiler import ProfilerActivity, profile

    _PROFILED[0] = True
    buf = _flush_buffer(device)
    e = _EVICT_KERNELS.get(device)
    if e is None:
        _evict(buf)
        _busy()
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            _evict(buf)
            _busy()
            torch.cuda.synchronize(device)
        e = _EVICT_KERNELS[device] = len(_device_events(prof))
    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            _evict(buf)
            _busy()
            fn()
        torch.cuda.synchronize(device)
    evs = _device_events(prof)
    per, rem = divmod(len(evs) - n * e, n)
    if per < 1 or rem:
        raise RuntimeError(f"kernel_spans_us: {len(evs)} device activities for {n} calls "
                           f"with {e} per eviction: fn does not issue the same work per call")
    return [evs[i * (e + per) + e:(i + 1) * (e + per)] for i in range(n)]


def kernel_spans_us(fn: Callable[[], Any], device: torch.device, n: int = 20) -> list[float]:
    """Per call of ``fn``, first start to last end of its device activities (µs) as the
    profiler (CUPTI) records them, each call after an L2 eviction (:func:`call_activities`).

    Unlike CUDA events this leaves out the launch latency and the event records around the
    call (about 3 µs per call on an H200), so it is the time the kernels themselves take:
    what a roofline compares. Kernels that overlap (programmatic dependent launch) count
    once; the gaps between a call's kernels count as the GPU leaves them (the launches are
    queued behind GPU spinning, so the host's speed adds none). ``fn`` must issue the same
    activities on the current stream every call.
    """
    return [float(max(g.time_range.end for g in grp) - min(g.time_range.start for g in grp))
            for grp in call_activities(fn, device, n)]


def graph_time_us(
    fn: Callable[[], Any], device: torch.device, inner: int = 20, reps: int = 30
) -> float | None:
    """Median device time per call of ``fn`` replayed from a CUDA graph of ``inner`` calls
    (each replay queued behind :func:`_busy`, so the graph's launch is not timed)."""
    if device.type != "cuda":
        return None
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(inner):
            fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize(device)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        _busy()
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / inner)
    del g
    return statistics.median(times)


_MAX_SPIN_US = 500_000.0  # a round that outlasts this runs again with fewer calls


def best_host_us(fn: Callable[[], Any], device: torch.device, n: int, spin: bool = True,
                 spin_us_per_call: float = 100.0, repeats: int = 5) -> float:
    """Best of ``repeats`` repeats of ``n`` calls of ``fn``, host µs per call; with ``spin``
    each repeat is queued behind ``n * spin_us_per_call`` µs of GPU spinning, so a GPU
    slower than the host cannot set the pace (for timing pieces of a launch path)."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        if spin and device.type == "cuda":
            _busy(n * spin_us_per_call)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n / 1e3)
    _sync(device)
    return best


def host_time_us(
    fn: Callable[[], Any],
    device: torch.device,
    n: int = 200,
    rounds: int = 7,
    sync_each: bool = False,
) -> float:
    """Median host wall time per call of ``fn`` over ``rounds`` rounds of ``n`` calls.

    On CUDA without ``sync_each``, each round is queued behind GPU spinning (:func:`_busy`)
    meant to outlast it, and an event recorded after the spin says whether it did. Had the
    host waited on the GPU anywhere in the round (a launch queue full of kernels slower than
    their host side), the spin would have ended inside the round: such a round is dropped
    and run again with half the calls (with a spin twice as long once ``n`` is 1). Every
    round kept is the host's own time. ``sync_each`` synchronizes after every call instead
    (wall time of whole calls).
    """
    for _ in range(min(n, 20)):  # the first calls may compile
        fn()
    _sync(device)
    hold = device.type == "cuda" and not sync_each and _sleep is not None
    est = 0.0  # µs per call after the warm-up: sizes the first spin
    if hold:
        warm = min(n, 10)
        t0 = time.perf_counter_ns()
        for _ in range(warm):
            fn()
        est = (time.perf_counter_ns() - t0) / warm / 1e3
        _sync(device)
    per: list[float] = []
    scale = 1
    while len(per) < rounds:
        if hold:
            _busy(min(max(200.0, 3.0 * n * (per[-1] if per else est)) * scale, _MAX_SPIN_US))
            held = torch.cuda.Event()
            held.record()
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
            if sync_each:
                _sync(device)
        t1 = time.perf_counter_ns()
        covered = not hold or not held.query()
        _sync(device)
        if covered or scale >= 64:
            per.append((t1 - t0) / n / 1e3)
        elif n > 1:
            n //= 2
        else:
            scale *= 2
    return statistics.median(per)


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30,
                       method: str = "clean", **timing: float) -> float | None:
    """Measured device-to-device copy bandwidth (bytes read + written per second), GB/s,
    of a copy of ``nbytes``, timed by :func:`gpu_time_us` ``method`` (``timing``: its
    ``warmup_ms`` / ``rep_ms``)."""
    if device.type != "cuda":
        return None
    n = max(1, nbytes // 4)
    a = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    us = gpu_time_us(lambda: b.copy_(a), device, method=method, **timing)
    return 2 * 4 * n / (us * 1e-6) / 1e9


def pct_of_copy(nbytes: float, us: float | None, copy_gbs: float | None) -> float | None:
    """``nbytes`` moved in ``us`` µs as a percentage of ``copy_gbs`` (GB/s); ``None`` when
    either time or bandwidth is missing (no GPU, nothing timed)."""
    if not us or not copy_gbs:
        return None
    return 100 * nbytes / us / 1e3 / copy_gbs


def result_path(kind: str, device_name: str, directory: str | Path = "benchmarks/results") -> Path:
    """``<directory>/<kind>-<device>-<date>.json`` with a file-name-safe device name."""
    safe = "".join(c if c.isalnum() else "-" for c in device_name).strip("-").lower()
    while "--" in safe:
        safe = safe.replace("--", "-")
    date = _dt.date.today().isoformat()
    return Path(directory) / f"{kind}-{safe}-{date}.json"


def write_json(path: str | Path, meta: dict[str, Any], rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``{**meta, "rows": rows}`` to ``path`` (directories created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({**meta, "rows": list(rows)}, indent=1, default=str) + "\n")
    return p


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Plain-text table of ``rows`` restricted to ``columns`` (floats to 3 significant digits)."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)
    ]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)
