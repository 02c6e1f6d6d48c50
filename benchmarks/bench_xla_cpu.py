"""Time the XLA backend's two formulations (bgmv gather, masked dense) on the CPU.

Runs the ``lora_dispatch.kernels.xla`` functions eagerly on the CPU (no torch_xla needed),
forcing each formulation in turn, over a grid of token counts T, slot counts L and layer
shapes (K, N, R, slices). Prints a table with the measured faster formulation, the one the
cost model (:func:`lora_dispatch.kernels.xla.choose`, platform ``cpu``) picks and the
measured crossover T, fits the cost-model constants to the measurements and writes
``benchmarks/results/xla-cpu-<date>.json``.

Usage::

    python benchmarks/bench_xla_cpu.py [--quick] [--dtype bf16|fp16|fp32] [--out PATH]

Eager CPU timings include PyTorch's per-op overhead and the float32 upcasts that XLA fuses
into its dots, so they calibrate the CPU model only; see docs/xla.md for the TPU model.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import lora_dispatch as ld
from lora_dispatch.bench.timing import (
    env_record,
    format_table,
    host_time_us,
    result_path,
    write_json,
)
from lora_dispatch.kernels import xla

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# (name, K, out_features, max_rank)
SHAPES_FULL = [
    ("k1024-n1024-r16", 1024, (1024,), 16),
    ("k4096-qkv-r16", 4096, (4096, 1024, 1024), 16),
    ("k4096-n4096-r64", 4096, (4096,), 64),
]
SHAPES_QUICK = [("k512-qkv-r16", 512, (512, 128, 128), 16)]
SLOTS_FULL = (4, 16)
TOKENS_FULL = (1, 4, 16, 64, 256, 1024)
TOKENS_QUICK = (1, 8, 64)


def _to_device(w, batch, x, base, dev):
    """Move weights and batch tensors to ``dev`` (the backend reads only these attributes)."""
    for name in ("lora_a", "lora_b", "ranks", "scalings", "slice_bounds"):
        setattr(w, name, getattr(w, name).to(dev))
    w.device = dev
    for name in ("token_slots", "sorted_tokens", "tile_map"):
        setattr(batch, name, getattr(batch, name).to(dev))
    batch.device = dev
    return w, batch, x.to(dev), base.to(dev)


def _setup(k, outs, rmax, nslots, t, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = ld.LoRAWeights(nslots, k, outs, rmax, dtype=dtype)
    for s in range(nslots):
        r = max(1, rmax >> (s % 3))  # mixed ranks: rmax, rmax/2, rmax/4
        a = [torch.randn(r, k, generator=g) / k**0.5 for _ in outs]
        b = [torch.randn(o, r, generator=g) / r**0.5 for o in outs]
        w.load(s, a, b, 1.0)
    slots = torch.randint(-1, nslots, (t,), generator=g)
    batch = ld.LoRABatch.from_token_adapters(slots)
    x = torch.randn(t, k, generator=g).to(dtype)
    base = torch.randn(t, sum(outs), generator=g).to(dtype)
    return w, batch, x, base


def _time_us(fn, budget_s: float, sync=None) -> float:
    """Best of 5 rounds (the minimum resists other processes on a shared machine)."""
    def call():
        fn()
        if sync is not None:
            sync()

    call()  # warm-up (and the compile, on an XLA device)
    t0 = time.perf_counter()
    call()
    once = time.perf_counter() - t0
    n = max(1, min(50, int(budget_s / max(once, 1e-6) / 5)))
    return min(host_time_us(call, torch.device("cpu"), n=n, rounds=1) for _ in range(5))


def _fit(rows):
    """Least-squares fit of time ~ c0 + model terms, per formulation; returns the constants."""
    bg = [(r["T"] * r["W"], r["bgmv_us"]) for r in rows]
    ms = [(r["L"] * r["W"], r["T"] * r["L"] * r["W"], r["masked_us"]) for r in rows]
    a = np.array([[1.0, u] for u, _ in bg])
    gather = np.linalg.lstsq(a, np.array([v for _, v in bg]), rcond=None)[0]
    a = np.array([[1.0, u, v] for u, v, _ in ms])
    masked = np.linalg.lstsq(a, np.array([v for _, _, v in ms]), rcond=None)[0]
    # relative constants, gather = 1 (only ratios matter); per-call intercepts reported apart
    g = float(gather[1])
    return {
        "bgmv_intercept_us": float(gather[0]),
        "masked_intercept_us": float(masked[0]),
        "gather_us_per_elem": g,
        "read_us_per_elem": float(masked[1]),
        "mac_us_per_elem": float(masked[2]),
        "relative": {"gather": 1.0, "read": float(masked[1]) / g, "mac": float(masked[2]) / g},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny grid (smoke run)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--budget", type=float, default=0.6, help="seconds per measurement")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (eager)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "xla"),
                    help="xla: torch_xla's device (PJRT_DEVICE=CPU here), compiled graphs")
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    dev, sync = torch.device("cpu"), None
    if args.device == "xla":
        import torch_xla
        import torch_xla.core.xla_model as xm

        dev = torch_xla.device()

        def sync():
            torch_xla.sync()
            xm.wait_device_ops()
    torch.manual_seed(0)
    shapes = SHAPES_QUICK if args.quick else SHAPES_FULL
    slot_counts = (4,) if args.quick else SLOTS_FULL
    tokens = TOKENS_QUICK if args.quick else TOKENS_FULL

    rows = []
    saved = xla.FORMULATION
    try:
        for name, k, outs, rmax in shapes:
            for nslots in slot_counts:
                for t in tokens:
                    w, batch, x, base = _setup(k, outs, rmax, nslots, t, dtype)
                    if dev.type != "cpu":
                        w, batch, x, base = _to_device(w, batch, x, base, dev)
                    times = {}
                    for form in xla.FORMULATIONS:
                        xla.FORMULATION = form
                        out = base.clone()
                        fn = lambda o=out, x=x, w=w, b=batch: xla.add_lora(o, x, w, b)  # noqa: E731
                        times[form] = _time_us(fn, args.budget, sync)
                    xla.FORMULATION = None
                    wel = rmax * (len(outs) * k + sum(outs))
                    rows.append({
                        "device": args.device, "shape": name, "K": k, "N": sum(outs),
                        "S": len(outs), "R": rmax,
                        "L": nslots, "T": t, "W": wel, "dtype": args.dtype,
                        "bgmv_us": times["bgmv"], "masked_us": times["masked"],
                        "faster": min(times, key=times.get),
                        "chosen": xla.choose(t, nslots, k, sum(outs), rmax, len(outs), "cpu"),
                        "ratio_bgmv_over_masked": times["bgmv"] / times["masked"],
                    })
                    r = rows[-1]
                    print(f"{name:>16} L={nslots:<3} T={t:<5} bgmv {r['bgmv_us']:>10.0f} us  "
                          f"masked {r['masked_us']:>10.0f} us  faster={r['faster']:<6} "
                          f"chosen={r['chosen']}", flush=True)
    finally:
        xla.FORMULATION = saved

    crossovers = []
    for name, _, _, _ in shapes:
        for nslots in slot_counts:
            sub = [r for r in rows if r["shape"] == name and r["L"] == nslots]
            first = next((r["T"] for r in sub if r["faster"] == "masked"), None)
            model = xla.COST_MODELS["cpu"].threshold(nslots)
            crossovers.append({"shape": name, "L": nslots, "measured_first_masked_T": first,
                               "model_threshold_T": None if math.isinf(model) else model})
    fit = _fit(rows) if len(rows) >= 4 else None
    agree = sum(r["faster"] == r["chosen"] for r in rows)

    print()
    print(format_table(rows, ["shape", "L", "T", "bgmv_us", "masked_us", "faster", "chosen"]))
    print()
    print(format_table(crossovers, ["shape", "L", "measured_first_masked_T", "model_threshold_T"]))
    print(f"\ncost model picks the measured faster formulation in {agree}/{len(rows)} cases")
    if fit:
        rel = fit["relative"]
        print(f"fitted CPU constants (gather=1): read={rel['read']:.3g} mac={rel['mac']:.3g}; "
              f"intercepts bgmv={fit['bgmv_intercept_us']:.0f} us "
              f"masked={fit['masked_intercept_us']:.0f} us")
    meta = {"benchmark": "xla-cpu", "env": env_record(torch.device("cpu")),
            "mode": "torch_xla PJRT CPU" if args.device == "xla" else "eager CPU",
            "threads": torch.get_num_threads(),
            "cost_model_cpu": vars(xla.COST_MODELS["cpu"]), "fit": fit,
            "crossovers": crossovers, "model_agrees": f"{agree}/{len(rows)}"}
    if args.device == "xla":
        import torch_xla

        meta["torch_xla"] = torch_xla.__version__
    path = args.out or result_path("xla", "cpu" if args.device == "cpu" else "cpu-pjrt")
    print("wrote", write_json(path, meta, rows))


if __name__ == "__main__":
    main()
