"""Print the README's benchmark tables (Markdown) from result JSON files.

    python benchmarks/readme_tables.py KERNELS_JSON [LAYER_JSON] [LAUNCH_JSON]
"""

from __future__ import annotations

import json
import sys


def kernels_table(path: str) -> str:
    d = json.load(open(path))
    rows = [r for r in d["rows"] if r.get("backend") == "triton" and r.get("adapters") == 4
            and r.get("dtype") == "bfloat16"]

    def pick(op, t, rank):
        for r in rows:
            if r["op"] == op and r["T"] == t and r["rank"] == rank:
                return r
        return None

    out = [f"{d['device']} · torch {d['torch']} · Triton {d['triton']} · commit "
           f"`{d['commit']}` · copy bandwidth {d['copy_gbs']:.0f} GB/s", "",
           "| op | T=8192 r16 | T=8192 r64 | T=2048 r16 | T=2048 r64 | decode T=1 r16 "
           "| decode T=64 r16 | host µs |", "|---|---|---|---|---|---|---|---|"]
    for op in ("shrink", "expand", "qkv_expand", "gate_up_expand", "add_lora"):
        cells = []
        for t, rank in ((8192, 16), (8192, 64), (2048, 16), (2048, 64)):
            r = pick(op, t, rank)
            kern = "" if r is None or r.get("pct_copy_kernel") is None else \
                f" · {r['pct_copy_kernel']:.0f}%"
            cells.append("-" if r is None else f"{r['pct_copy']:.0f}%{kern}")
        for t in (1, 64):
            r = pick(op, t, 16)
            cells.append("-" if r is None or r.get("graph_us") is None else f"{r['graph_us']:.1f}")
        r = pick(op, 64, 16)
        cells.append("-" if r is None else f"{r['host_us']:.1f}")
        out.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def size_copy_table(path: str) -> str:
    """Prefill rows (4 adapters) against a copy of their own minimal bytes: the copy's
    speed as % of the 1 GiB copy bandwidth, and the op's GPU time as % of the copy's."""
    d = json.load(open(path))
    rows = {(r["op"], r["T"], r["rank"]): r for r in d["rows"]
            if r.get("backend") == "triton" and r.get("adapters") == 4
            and r.get("size_copy_us")}
    heads = [(t, rank) for t in (8192, 2048) for rank in (16, 64)]
    out = ["| op | " + " | ".join(f"T={t} r{rank}: copy · op" for t, rank in heads) + " |",
           "|---|" + "---|" * len(heads)]
    for op in ("shrink", "expand", "qkv_expand", "gate_up_expand", "add_lora"):
        cells = []
        for t, rank in heads:
            r = rows.get((op, t, rank))
            if r is None:
                cells.append("-")
                continue
            copy_pct = 100 * r["bytes"] / r["size_copy_us"] / 1e3 / d["copy_gbs"]
            cells.append(f"{copy_pct:.0f}% · {r['pct_size_copy']:.0f}%")
        out.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def layer_table(path: str) -> str:
    d = json.load(open(path))
    rows = [r for r in d["rows"] if r.get("adapters") == 4]
    out = [f"commit `{d.get('commit')}`", "",
           "| rank | T | base GPU µs | +LoRA GPU µs | slowdown eager | slowdown CUDA graph "
           "| host µs of the 4 LoRA ops (fast_launch / plain Triton) |",
           "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["T"], r["rank"])):
        out.append("| " + " | ".join(str(x) for x in (
            r["rank"], r["T"], round(r["gpu_base_us"]), round(r["gpu_lora_us"]),
            f"{r['slowdown_pct']:.0f}%",
            f"{r['graph_slowdown_pct']:.0f}%" if r.get("graph_slowdown_pct") is not None else "-",
            f"{r['host_lora_fast_us']:.0f} / {r['host_lora_triton_us']:.0f}")) + " |")
    return "\n".join(out)


def launch_table(path: str) -> str:
    d = json.load(open(path))
    cols = ("triton", "floor", "fast", "fast_lean", "fast_native", "graph")
    out = [f"commit `{d['commit']}`", "",
           "| kernel | `kernel[grid]` | floor | python | lean | native | CUDA graph |",
           "|---|---|---|---|---|---|---|"]
    for name, row in d["kernels"].items():
        out.append(f"| {name.replace('_', ' ')} | " + " | ".join(
            f"{row[c]['median_us']:.2f}" if c in row else "-" for c in cols) + " |")
    lay = d.get("layer", {})
    out.append("| Llama-3-8B layer, 8 LoRA launches | " + " | ".join(
        f"{lay[c]['median_us']:.1f}" if c in lay else "" for c in cols) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    print(kernels_table(args[0]))
    print()
    print(size_copy_table(args[0]))
    if len(args) > 1:
        print()
        print(layer_table(args[1]))
    if len(args) > 2:
        print()
        print(launch_table(args[2]))
