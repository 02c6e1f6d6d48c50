"""Eager host time of one public add_lora call (qkv, rank 16, 4 adapters) per launch tier.

    python benchmarks/_host_add_lora.py [--json PATH]

Tiers: ``triton`` (plain JIT launches), ``python`` / ``lean`` / ``native`` (fast_launch
tiers, see ``FastLauncher.launch_tier``). Host time = median wall time per call over rounds
of back-to-back calls (GPU synchronised between rounds only).
"""

import argparse

import torch

import lora_dispatch as ld
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import env_record, host_time_us, write_json
from lora_dispatch.launchers import set_launcher_mode, set_lean_launch, set_native_launch

ap = argparse.ArgumentParser()
ap.add_argument("--json", default=None)
args = ap.parse_args()
dev = torch.device("cuda")
rows = []
for t in (1, 64, 2048):
    p = Problem("add_lora", 4096, t, 16, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    row = {"op": "add_lora", "T": t, "rank": 16, "adapters": 4, "shape": "qkv 4096->6144"}
    for tier in ("triton", "python", "lean", "native"):
        set_launcher_mode("triton" if tier == "triton" else "fast")
        set_lean_launch(tier in ("lean", "native"))
        set_native_launch(tier == "native")
        call = (lambda out=out, x=x, w=w, batch=batch: ld.add_lora(out, x, w, batch))
        row[f"host_us_{tier}"] = round(host_time_us(call, dev, n=200), 2)
    set_launcher_mode(None)
    set_lean_launch(None)
    set_native_launch(None)
    rows.append(row)
    print(f"add_lora host T={t}: " + ", ".join(
        f"{k[8:]} {v:.1f} us" for k, v in row.items() if k.startswith("host_us_")), flush=True)
if args.json:
    write_json(args.json, env_record(dev), rows)
