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
import json
import math
import time
from pathlib import Path

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


def _regret(model: xla.CostModel, rows) -> tuple[int, float]:
    """(cases where ``model`` picks the slower formulation, summed log2 slowdown of those)."""
    wrong, loss = 0, 0.0
    for r in rows:
        args = (r["T"], r["L"], r["W"])
        pick = "bgmv" if model.bgmv(*args) <= model.masked(*args) else "masked"
        if pick != r["faster"]:
            wrong += 1
            loss += abs(math.log2(r["bgmv_us"] / r["masked_us"]))
    return wrong, loss


def _fit(rows):
    """Cost-model constants (gather = 1) minimising the slowdown of wrong picks (grid search)."""
    best = None
    for read in np.logspace(-3, 1, 41):
        for mac in np.logspace(-5, 0, 51):
            m = xla.CostModel(gather=1.0, read=float(read), mac=float(mac))
            wrong, loss = _regret(m, rows)
            key = (loss, wrong, abs(math.log(read)) + abs(math.log(mac)))
            if best is None or key < best[0]:
                best = (key, m, wrong)
    (loss, _, _), m, wrong = best
    cur_wrong, cur_loss = _regret(xla.COST_MODELS[rows[0].get("model", "cpu")], rows)
    return {"fitted": {"gather": 1.0, "read": m.read, "mac": m.mac}, "fitted_wrong": wrong,
            "fitted_log2_loss": loss, "current_wrong": cur_wrong, "current_log2_loss": cur_loss,
            "fitted_thresholds": {str(n): m.threshold(n) for n in (2, 4, 8, 16, 32, 64)}}


def _report(rows, meta_extra, out_path, model_key):
    shapes = sorted({r["shape"] for r in rows})
    slot_counts = sorted({r["L"] for r in rows})
    model = xla.COST_MODELS[model_key]
    for r in rows:
        r["model"] = model_key
        r["chosen"] = xla.choose(r["T"], r["L"], r["K"], r["N"], r["R"], r["S"], model_key)
    crossovers = []
    for name in shapes:
        for nslots in slot_counts:
            sub = [r for r in rows if r["shape"] == name and r["L"] == nslots]
            if not sub:
                continue
            first = next((r["T"] for r in sub if r["faster"] == "masked"), None)
            thr = model.threshold(nslots)
            crossovers.append({"shape": name, "L": nslots, "measured_first_masked_T": first,
                               "model_threshold_T": None if math.isinf(thr) else thr})
    fit = _fit(rows) if len(rows) >= 4 else None
    agree = sum(r["faster"] == r["chosen"] for r in rows)
    print()
    print(format_table(rows, ["shape", "L", "T", "bgmv_us", "masked_us", "faster", "chosen"]))
    print()
    print(format_table(crossovers, ["shape", "L", "measured_first_masked_T", "model_threshold_T"]))
    print(f"\ncost model {model_key!r} picks the measured faster formulation in "
          f"{agree}/{len(rows)} cases")
    if fit:
        f = fit["fitted"]
        print(f"best-fitting constants (gather=1): read={f['read']:.3g} mac={f['mac']:.3g} "
              f"({fit['fitted_wrong']} wrong picks, log2 loss {fit['fitted_log2_loss']:.2f}; "
              f"current model: {fit['current_wrong']} wrong, {fit['current_log2_loss']:.2f})")
    meta = {**meta_extra, "cost_model": model_key, "cost_model_constants": vars(model),
            "fit": fit, "crossovers": crossovers, "model_agrees": f"{agree}/{len(rows)}"}
    print("wrote", write_json(out_path, meta, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny grid (smoke run)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--budget", type=float, default=0.6, help="seconds per measurement")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated shape names to run (default: all of the grid)")
    ap.add_argument("--slots", default=None, help="comma-separated slot counts L")
    ap.add_argument("--max-t", type=int, default=None, help="largest token count")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (eager)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "xla"),
                    help="xla: torch_xla's device (PJRT_DEVICE=CPU here), compiled graphs")
    ap.add_argument("--refit", default=None, metavar="JSON",
                    help="re-report (choice, crossovers, fit) from a result file; no timing")
    args = ap.parse_args()
    if args.refit:
        data = json.loads(Path(args.refit).read_text())
        rows = data.pop("rows")
        keep = {k: data[k] for k in ("benchmark", "env", "mode", "threads", "dtype", "torch_xla")
                if k in data}
        key = "xla-cpu" if rows and rows[0].get("device") == "xla" else "cpu"
        _report(rows, keep, args.out or args.refit, key)
        return
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
    if args.shapes:
        shapes = [s for s in SHAPES_FULL + SHAPES_QUICK if s[0] in args.shapes.split(",")]
    if args.slots:
        slot_counts = tuple(int(v) for v in args.slots.split(","))
    if args.max_t:
        tokens = tuple(t for t in tokens if t <= args.max_t)

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
                        "ratio_bgmv_over_masked": times["bgmv"] / times["masked"],
                    })
                    r = rows[-1]
                    print(f"{name:>16} L={nslots:<3} T={t:<5} bgmv {r['bgmv_us']:>10.0f} us  "
                          f"masked {r['masked_us']:>10.0f} us  faster={r['faster']}", flush=True)
    finally:
        xla.FORMULATION = saved

    meta = {"benchmark": "xla-cpu", "env": env_record(torch.device("cpu")),
            "mode": "torch_xla PJRT CPU" if args.device == "xla" else "eager CPU",
            "threads": torch.get_num_threads(), "dtype": args.dtype}
    if args.device == "xla":
        import torch_xla

        meta["torch_xla"] = torch_xla.__version__
    path = args.out or result_path("xla", "cpu" if args.device == "cpu" else "cpu-pjrt")
    _report(rows, meta, path, "xla-cpu" if args.device == "xla" else "cpu")


if __name__ == "__main__":
    main()
