"""Host time per Triton kernel launch: plain ``kernel[grid]`` vs fast_launch vs the floor.

``python benchmarks/bench_launch.py [--quick] [--json PATH] [--commit SHA]``

For trivial kernels with 4, 10 and 20 arguments it measures, per launch (median over
repeats of N back-to-back launches timed with ``time.perf_counter_ns``; the GPU is
synchronised between repeats, never per launch):

* ``triton``  - ``kernel[grid](...)``;
* ``floor``   - the compiled kernel's launcher called directly with grid, stream, function,
  metadata and hooks precomputed (what no Python launcher can beat without going native);
* ``fast``    - ``fast_launch`` (standard path: calls the compiled kernel's ``run``);
* ``fast_lean`` - ``fast_launch`` with the lean C entry point (Triton 3.5 / 3.6 CUDA);
* ``fast_native`` - ``fast_launch``'s native tier: key, lookup and ``cuLaunchKernelEx`` in
  one C call built at first use (Triton 3.5 / 3.6 CUDA);
* ``graph``   - CUDA-graph replay of N captured launches, host time / N.

Then one Llama-3-8B decoder layer's LoRA launches (shrink + expand for qkv, o, gate_up and
down: 8 launches of 14-16-argument stand-in kernels) through plain Triton and fast_launch.
Writes ``benchmarks/results/launch-<device>-<date>.json`` (or ``--json PATH``).
"""

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _time_per_launch(fn, n: int, repeats: int, sync) -> dict:
    """Median / min host ns per call of ``fn`` over ``repeats`` blocks of ``n`` calls."""
    for _ in range(max(50, n // 4)):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        t1 = time.perf_counter_ns()
        sync()
        samples.append((t1 - t0) / n)
    return {"median_us": statistics.median(samples) / 1e3, "min_us": min(samples) / 1e3,
            "repeats": repeats, "launches_per_repeat": n}


try:  # kernels live at module level: Triton resolves ``tl`` in the function's globals
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - reported by main()
    triton = None

if triton is not None:
    from lora_dispatch.bench.launch_stubs import k4, k10, k20

    @triton.jit
    def lora_shrink(x_ptr, a_ptr, out_ptr, tok_lora_ptr, m, n, k, sxm, sxk, sal, sak, som,
                    scale, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pass

    @triton.jit
    def lora_expand(buf_ptr, b_ptr, y_ptr, tok_lora_ptr, m, n, k, sbm, sbl, sbn, sym,
                    ADD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
        pass


def _arg_sets(torch):
    t = torch.empty(1 << 16, device="cuda", dtype=torch.float16)
    return {
        4: ((t, t, 4096), {"BLOCK": 256}),
        10: ((t, t, t, t, 4096, 128, 4096, 0.5), {"BLOCK": 256, "ACT": 1}),
        20: ((t, t, t, t, t, t, 128, 4096, 4096, 4096, 1, 4096, 1, 4096, 1, 0.5),
             {"BM": 64, "BN": 64, "BK": 32, "ACT": 0}),
    }


def _floor_fn(jit, compiled, grid, args, kwargs, torch):
    """The compiled kernel's launcher with everything precomputed."""
    import triton

    from lora_dispatch.launchers.versions import get_adapter

    adapter = get_adapter()
    run = compiled.run
    function, packed = compiled.function, compiled.packed_metadata
    names = [p.name for p in jit.params]
    bound = dict(zip(names, args))
    bound.update(kwargs)
    launch_args = tuple(bound[p.name] for p in jit.params
                        if adapter.passes_constexprs or not p.is_constexpr)
    stream = triton.runtime.driver.active.get_current_stream(torch.cuda.current_device())
    g = tuple(grid) + (1,) * (3 - len(grid))
    return lambda: run(g[0], g[1], g[2], stream, function, packed, None, None, None,
                       *launch_args)


def _graph_fn(launch, n, torch):
    """Capture ``n`` launches in a CUDA graph; replaying it issues all of them."""
    launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            launch()
    return graph.replay


TIERS = (("fast", "python"), ("fast_lean", "lean"), ("fast_native", "native"))


def _set_tier(tier: str | None) -> None:
    from lora_dispatch.launchers import set_lean_launch, set_native_launch

    set_lean_launch(None if tier is None else tier != "python")
    set_native_launch(None if tier is None else tier == "native")


def _bench_kernel(jit, args, kwargs, grid, n_launch, repeats, lean_ok, torch) -> dict:
    from lora_dispatch.launchers import fast_launch

    sync = torch.cuda.synchronize
    row: dict = {}
    compiled = jit[grid](*args, **kwargs)
    sync()
    row["triton"] = _time_per_launch(lambda: jit[grid](*args, **kwargs), n_launch, repeats,
                                     sync)
    row["floor"] = _time_per_launch(_floor_fn(jit, compiled, grid, args, kwargs, torch),
                                    n_launch, repeats, sync)
    for label, tier in TIERS:
        if tier != "python" and not lean_ok:
            continue
        _set_tier(tier)
        fast = fast_launch(jit)
        assert fast[grid](*args, **kwargs) is compiled
        assert fast[grid](*args, **kwargs) is compiled
        assert fast.launch_tier == tier, (fast.launch_tier, tier)
        row[label] = _time_per_launch(lambda f=fast: f[grid](*args, **kwargs), n_launch,
                                      repeats, sync)
        row[label]["cache_info"] = fast.cache_info()._asdict()
    _set_tier(None)
    n_graph = 100
    replay = _graph_fn(lambda: jit[grid](*args, **kwargs), n_graph, torch)
    g = _time_per_launch(replay, max(10, n_launch // n_graph), repeats, sync)
    g["median_us"] /= n_graph
    g["min_us"] /= n_graph
    g["note"] = f"one replay = {n_graph} kernels; host time per kernel"
    row["graph"] = g
    return row


def _breakdown(arg_set, n, repeats, torch) -> dict:
    """Cost of the pieces of a launch (10-argument kernel): stream / device queries, key."""
    from lora_dispatch.launchers import fast_launch

    args, kwargs = arg_set
    dev = torch.cuda.current_device()
    drv = triton.runtime.driver.active
    fast = fast_launch(k10)
    fast[(1,)](*args, **kwargs)
    key = fast._fl_ns["_fl_key"]
    cache = fast._fl_caches.get(0) or next(iter(fast._fl_caches.values()))
    pieces = {
        "triton_driver_get_current_stream": lambda: drv.get_current_stream(dev),
        "torch_current_stream_cuda_stream": lambda: torch.cuda.current_stream().cuda_stream,
        "torch_C_getCurrentRawStream": lambda: torch._C._cuda_getCurrentRawStream(dev),
        "torch_cuda_current_device": torch.cuda.current_device,
        "torch_C_cuda_getDevice": getattr(torch._C, "_cuda_getDevice", lambda: 0),
        "fast_key_only": lambda: key(*args, **kwargs),
        "fast_key_and_lookup": lambda: cache.get(key(*args, **kwargs)),
        "getitem_partial_only": lambda: fast[(1,)],
    }
    sync = torch.cuda.synchronize
    return {name: _time_per_launch(fn, n, repeats, sync)["median_us"]
            for name, fn in pieces.items()}


def _bench_layer(n_launch, repeats, lean_ok, torch) -> dict:
    """One Llama-3-8B decoder layer: 8 LoRA launches (shrink + expand x 4 projections)."""
    from lora_dispatch.launchers import fast_launch

    sync = torch.cuda.synchronize
    shrink, expand = lora_shrink, lora_expand
    layer: dict = {}
    tokens, rank, hidden, kv, inter = 256, 16, 4096, 1024, 14336
    f16 = torch.float16
    x = torch.empty(tokens, hidden, device="cuda", dtype=f16)
    x_inter = torch.empty(tokens, inter, device="cuda", dtype=f16)
    tok = torch.zeros(tokens, device="cuda", dtype=torch.int32)
    projections = {"qkv": (hidden, hidden + 2 * kv), "o": (hidden, hidden),
                   "gate_up": (hidden, 2 * inter), "down": (inter, hidden)}
    launches = []
    for _, (k_in, n_out) in projections.items():
        a = torch.empty(4, rank, k_in, device="cuda", dtype=f16)
        b = torch.empty(4, n_out, rank, device="cuda", dtype=f16)
        buf = torch.empty(tokens, rank, device="cuda", dtype=torch.float32)
        y = torch.empty(tokens, n_out, device="cuda", dtype=f16)
        xin = x if k_in == hidden else x_inter
        launches.append(("shrink", (triton.cdiv(tokens, 16), 1),
                         (xin, a, buf, tok, tokens, rank, k_in, xin.stride(0), 1,
                          a.stride(0), a.stride(2), buf.stride(0), 0.5),
                         {"BM": 16, "BN": 16, "BK": 64}))
        launches.append(("expand", (triton.cdiv(tokens, 16), triton.cdiv(n_out, 128)),
                         (buf, b, y, tok, tokens, n_out, rank, buf.stride(0), b.stride(0),
                          b.stride(1), y.stride(0)),
                         {"ADD": True, "BM": 16, "BN": 128}))
    kernels = {"shrink": shrink, "expand": expand}

    def layer_with(table):
        def run():
            for name, g, a, kw in launches:
                table[name][g](*a, **kw)
        return run

    layer_plain = layer_with(kernels)
    layer_plain()
    sync()
    n_layer = max(20, n_launch // 8)
    layer["triton"] = _time_per_launch(layer_plain, n_layer, repeats, sync)
    for label, tier in TIERS:
        if tier != "python" and not lean_ok:
            continue
        _set_tier(tier)
        fast_tab = {k: fast_launch(v) for k, v in kernels.items()}
        layer_fast = layer_with(fast_tab)
        layer_fast()
        layer_fast()
        assert all(f.launch_tier == tier for f in fast_tab.values())
        layer[label] = _time_per_launch(layer_fast, n_layer, repeats, sync)
    layer["launches"] = len(launches)
    layer["shapes"] = {"tokens": tokens, "rank": rank, **{
        k: {"in": i, "out": o} for k, (i, o) in projections.items()}}
    _set_tier(None)
    return layer

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", default=None, help="output path")
    parser.add_argument("--commit", default=None, help="git commit to record")
    ns = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("bench_launch: torch is not installed; nothing to measure")
        return 0
    if not torch.cuda.is_available():
        print("bench_launch: no CUDA / ROCm GPU available; nothing to measure")
        return 0
    if triton is None:
        print("bench_launch: triton is not installed; nothing to measure")
        return 0

    from lora_dispatch.bench.timing import _git_commit as git_commit
    from lora_dispatch.launchers import get_adapter, set_launcher_mode

    set_launcher_mode("fast")
    n_launch = 200 if ns.quick else 1000
    repeats = 7 if ns.quick else 25
    device_name = torch.cuda.get_device_name()
    adapter = get_adapter()
    lean_ok = adapter.lean_capable and torch.version.hip is None
    results: dict = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name,
        "triton": triton.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": ns.commit or git_commit(),  # LORA_DISPATCH_COMMIT, else git
        "method": f"median over {repeats} repeats of {n_launch} back-to-back launches, "
                  "host time (perf_counter_ns), GPU synchronised between repeats only",
        "kernels": {},
        "layer": {},
    }
    arg_sets = _arg_sets(torch)
    for n_args, jit in ((4, k4), (10, k10), (20, k20)):
        args, kwargs = arg_sets[n_args]
        try:
            results["kernels"][f"{n_args}_args"] = _bench_kernel(
                jit, args, kwargs, (1,), n_launch, repeats, lean_ok, torch)
        except Exception as exc:  # keep the other measurements
            results.setdefault("errors", []).append(f"{n_args} args: {exc!r}")
            print(f"bench_launch: {n_args}-argument kernel failed: {exc!r}")
    try:
        results["breakdown"] = _breakdown(arg_sets[10], n_launch, repeats, torch)
    except Exception as exc:
        results.setdefault("errors", []).append(f"breakdown: {exc!r}")
        results["breakdown"] = {}

    try:
        results["layer"] = _bench_layer(n_launch, repeats, lean_ok, torch)
    except Exception as exc:
        results.setdefault("errors", []).append(f"layer: {exc!r}")
        print(f"bench_launch: layer benchmark failed: {exc!r}")
    _set_tier(None)

    # ---- report
    print(f"{device_name} | triton {triton.__version__} | torch {torch.__version__} | "
          f"commit {results['commit']}")
    cols = ["triton", "floor", "fast", "fast_lean", "fast_native", "graph"]
    print(f"{'us / launch (median)':<22}" + "".join(f"{c:>11}" for c in cols))
    for name, row in results["kernels"].items():
        cells = "".join(f"{row[c]['median_us']:>11.2f}" if c in row else f"{'-':>11}"
                        for c in cols)
        print(f"{name:<22}{cells}")
    for name, row in results["kernels"].items():
        if "fast" not in row:
            continue
        best = min(row[c]["median_us"] for c in ("fast", "fast_lean", "fast_native")
                   if c in row)
        print(f"{name}: fast/floor {row['fast']['median_us'] / row['floor']['median_us']:.3f}"
              f"  best-fast/floor {best / row['floor']['median_us']:.3f}"
              f"  triton/fast {row['triton']['median_us'] / row['fast']['median_us']:.2f}x"
              f"  triton/best-fast {row['triton']['median_us'] / best:.2f}x")
    print("breakdown (us): " + ", ".join(f"{k} {v:.3f}" for k, v in results["breakdown"].items()))
    lay = results["layer"]
    print(f"Llama-3-8B layer, {lay.get('launches')} LoRA launches, us host time: " + ", ".join(
        f"{k} {v['median_us']:.1f}" for k, v in lay.items() if isinstance(v, dict)
        and "median_us" in v))

    path = ns.json
    if path is None:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
        date = _dt.date.today().isoformat()
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            f"launch-{slug}-{date}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
