"""Eager ``add_lora`` on the Gluon plan against the Triton plan where the host may be the
bottleneck (H200, sixteenth session).

    python benchmarks/_host_gluon_group.py [--json PATH]

Two sets of weights with the same adapters: one planned with ``LORA_DISPATCH_GLUON=0`` (the
Triton shrink), one with the Gluon shrink (forced for the ``host`` rows, the default policy
for the others), qkv, 4 adapters, bf16. 15 alternating rounds of 100 calls, the median of
each (every round's figure in the JSON):

- ``host``: host µs per public call while the GPU spins (``torch.cuda._sleep`` queued
  first), so every launch only queues: the host's own cost, whatever the GPU time;
- ``loop``: wall µs per call of back-to-back calls (whichever of host or GPU is slower
  sets it);
- ``layer``: the same after the base GEMM (``torch.mm`` into ``base_out``) before each call,
  and each kernel's mean duration in that loop from the profiler (``kernels``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time

import torch

from lora_dispatch.bench.timing import _busy, _device_events


def _loop_us(fn, n: int = 200, busy: bool = False) -> float:
    """µs per call of ``n`` calls: the host's own time behind ~100 µs of GPU spinning per
    call (``busy``; ``host_time_us`` without the spin), else the wall time to the GPU's end."""
    torch.cuda.synchronize()
    if busy:
        _busy(n * 100)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    t1 = time.perf_counter_ns()
    torch.cuda.synchronize()
    end = t1 if busy else time.perf_counter_ns()
    return (end - t0) / n / 1e3


def _ab(fns: dict, rounds: int = 15, n: int = 100, busy: bool = False) -> dict:
    """Median over alternating rounds of each callable's µs per call, and each round's."""
    for fn in fns.values():
        _loop_us(fn, 20)
    runs = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            runs[k].append(_loop_us(fn, n, busy))
    out = {k: statistics.median(v) for k, v in runs.items()}
    out["rounds"] = {k: [round(u, 2) for u in v] for k, v in runs.items()}
    return out


def _kernels(fn, n: int = 50) -> dict:
    """Mean device time per call of each kernel ``fn`` launches (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    tot = collections.defaultdict(float)
    for e in _device_events(prof):
        tot[e.name[:48]] += e.time_range.end - e.time_range.start
    return {k: v / n for k, v in tot.items()}


def _pair(rank: int, t: int, forced: bool):
    import lora_dispatch as ld
    from lora_dispatch.bench.kernels import Problem, _build

    dev = torch.device("cuda")
    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 2)
    (w_off, x, _, out), (w_on, _, _, _) = items
    os.environ["LORA_DISPATCH_GLUON"] = "0"
    ld.add_lora(out, x, w_off, batch)  # plans with the Triton shrink
    os.environ["LORA_DISPATCH_GLUON"] = "1" if forced else "auto"
    ld.add_lora(out, x, w_on, batch)
    os.environ.pop("LORA_DISPATCH_GLUON")
    return batch, x, out, w_off, w_on


def _calls(batch, x, out, w_off, w_on, wt=None) -> dict:
    import lora_dispatch as ld

    if wt is None:
        return {"triton": lambda: ld.add_lora(out, x, w_off, batch),
                "gluon": lambda: ld.add_lora(out, x, w_on, batch)}

    def layer(w):
        torch.mm(x, wt.t(), out=out)
        ld.add_lora(out, x, w, batch)

    return {"triton": lambda: layer(w_off), "gluon": lambda: layer(w_on)}


def _parts(rank: int, t: int) -> dict:
    """The two plans' host path piece by piece (µs per call, median of 7 rounds of 200):
    the plan pick, the slot assembly, the launch-group call (under a spinning GPU), and the
    group's native call split into C keys and driver launches (``fl_time_group``)."""
    from lora_dispatch.bench.kernels import _group_c_split
    from lora_dispatch.kernels.triton import launch as L

    batch, x, out, w_off, w_on = _pair(rank, t, True)
    p_on = L.plan_for("add", w_on, t)
    a = L._pick(p_on, x, w_on)
    p = L.plan_for("add", w_off, t)
    ws = L._workspace(max(a.ws_numel, p.ws_numel), x)
    dev = torch.device("cuda")

    def med(fn, busy=False):
        for _ in range(20):
            fn()
        return statistics.median(_loop_us(fn, 200, busy) for _ in range(7))

    ts = L._group_slots(p, out, x, w_off, batch, ws, t)
    gs = L._gluon_group_slots(a, out, x, w_on, batch, ws, t)
    tg, gg = (p.shrink.grid, p.expand.grid), (a.shrink.gluon.grid, a.expand.grid)
    r = {
        "pick_gluon": med(lambda: L._pick(p_on, x, w_on)),
        "slots_triton": med(lambda: L._group_slots(p, out, x, w_off, batch, ws, t)),
        "slots_gluon": med(lambda: L._gluon_group_slots(a, out, x, w_on, batch, ws, t)),
        "group_triton": med(lambda: L._GROUP(tg, ts), busy=True),
        "group_gluon": med(lambda: L._GGROUP(gg, gs), busy=True),
    }
    for name, grp, grids, slots in (("triton", L._GROUP, tg, ts), ("gluon", L._GGROUP, gg, gs)):
        torch.cuda.synchronize()
        for part, us in _group_c_split(grp, grids, slots, dev):
            r[f"{name} {part}"] = us
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--pin", type=int, default=0,
                    help="run on this many CPU cores (sched_setaffinity; 0: as started)")
    ap.add_argument("--parts-only", action="store_true", help="only the piece-by-piece rows")
    ap.add_argument("--host-only", action="store_true", help="only the host rows")
    args = ap.parse_args()
    if args.pin:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.pin])
    from lora_dispatch.kernels.triton import launch as L

    rows = []
    wt = torch.randn(6144, 4096, device="cuda", dtype=torch.bfloat16) / 64

    def row(kind, rank, t, r, g0):
        rows.append(dict(kind=kind, rank=rank, T=t, gluon_groups=L._GGROUP.launches - g0, **r))
        print({k: v for k, v in rows[-1].items() if k != "rounds"}, flush=True)

    for rank in (16, 64):
        if not args.host_only:
            rows.append(dict(kind="parts", rank=rank, T=512, **_parts(rank, 512)))
            print(rows[-1], flush=True)
        if args.parts_only:
            continue
        for t in (128, 512, 2048):
            g0 = L._GGROUP.launches
            row("host", rank, t, _ab(_calls(*_pair(rank, t, True)), busy=True), g0)
        if args.host_only:
            continue
        for t in (512, 1024, 2048):
            pair = _pair(rank, t, False)
            g0 = L._GGROUP.launches
            row("loop", rank, t, _ab(_calls(*pair)), g0)
            g0 = L._GGROUP.launches
            fns = _calls(*pair, wt=wt)
            r = _ab(fns)
            r["kernels"] = {k: _kernels(fn) for k, fn in fns.items()}
            row("layer", rank, t, r, g0)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "commit": os.environ.get("LORA_DISPATCH_COMMIT"),
                       "method": __doc__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
