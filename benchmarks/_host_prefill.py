"""Host time of one eager prefill ``add_lora`` on the descriptor plans, three launch paths.

    python benchmarks/_host_prefill.py [--json PATH] [--rounds 5]

The benchmark's ``add_lora`` rows at T = 2048 and 8192 (qkv 4096 -> 6144, bf16, 4 adapters,
rank 16 and 64) run the Gluon shrink with the Triton expand, or (rank 64, T >= 4096) both
Gluon kernels. Paths, in alternating rounds (median of the rounds' medians):

- ``separate``: no prefill launch group, no per-call path (the Gluon shrink + Triton
  expand still go through their bound group, the Gluon expand launches on its own: the
  tree before this script);
- ``group``: the shrink and the Gluon expand as one bound launch group, no per-call path;
- ``hot``: as ``group``, plus the armed per-call path for every descriptor plan.

Each figure is :func:`host_time_us`: the host's own µs per public call, queued behind GPU
spinning. ``launches`` counts each launch group's launches per path (which kernels ran).
"""

from __future__ import annotations

import argparse
import statistics

import torch

import lora_dispatch as ld
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import best_host_us, env_record, host_time_us, write_json
from lora_dispatch.kernels.triton import launch as L


def _set(path: str, saved: dict) -> None:
    L._XGROUP = saved["_XGROUP"] if path != "separate" else None
    L._GXGROUP = saved["_GXGROUP"] if path != "separate" else None
    L._arm_hot_desc = saved["_arm_hot_desc"] if path == "hot" else _no_arm


def _no_arm(p, name, bound, x, ws, w, entry, base_out=None) -> None:
    entry.memo[5] = None


_GROUPS = ("_GROUP", "_GGROUP", "_XGROUP", "_GXGROUP")


def _counts(saved: dict) -> dict:
    return {k: getattr(saved.get(k) or getattr(L, k), "launches", 0) for k in _GROUPS}


def parts(t: int, rank: int, dev: torch.device) -> dict:
    """Host µs of the pieces of the armed per-call path of one prefill shape."""
    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    for _ in range(5):
        ld.add_lora(out, x, w, batch)
    entry = L.plan_for("add", w, t)
    hot = entry.memo[5]
    plan = L._pick(entry, x, w)
    sp, ep = plan.shrink, plan.expand
    res: dict[str, float | str | None] = {"T": t, "rank": rank, "armed": hot is not None}
    gs = sp.gluon
    ge = ep.gluon if ep.gluon is not None and L._gluon_expand_ok(ep.gluon, out, w) else None
    name = "_GGROUP" if ge is None else ("_GXGROUP" if gs is not None else "_XGROUP")
    res["group"] = name
    table = {"public add_lora": lambda: ld.add_lora(out, x, w, batch)}
    if hot is not None:
        table["hot()"] = lambda: hot(out, x, w, batch)
        bound = plan.memo[4] if name == "_GGROUP" else plan.memo[6][4]
        ready, launch, tables, stream_of, d = getattr(L, name).hot(bound)
        grids = (sp.grid if gs is None else gs.grid, ep.grid if ge is None else ge.grid)
        xs, os_ = x.stride(), out.stride()
        xd = None if gs is None else L.rows_descriptor(x, t, 4096, xs[0], gs.tile)
        od = None if ge is None else L.out_descriptor(out, t, w.total_out, os_[0], ge.tile)
        if ge is None:
            vals = (xd, x, *xs, out, *os_)
        elif gs is None:
            vals = (x, *xs, od, out, os_[0])
        else:
            vals = (xd, x, *xs, od, out, os_[0])
        s = stream_of(d)
        table["native call, built slots"] = lambda: launch(bound, tables, grids, s, d, *vals)
        checks = {"ready()": ready, "_tma_ready(x)": lambda: L._tma_ready(x)}
        if gs is not None:
            checks["rows_descriptor(x)"] = lambda: L.rows_descriptor(x, t, 4096, xs[0],
                                                                     gs.tile)
        if ge is not None:
            checks["out_descriptor(out)"] = lambda: L.out_descriptor(out, t, w.total_out,
                                                                     os_[0], ge.tile)
    else:
        checks = {}
    for label, fn in table.items():
        res[label] = best_host_us(fn, dev, 100, spin_us_per_call=150)
    for label, fn in checks.items():
        res[label] = best_host_us(fn, dev, 5000, spin=False)
    print(f"T={t} r{rank} {name} armed={hot is not None}: " + "  ".join(
        f"{k} {v:.2f}" for k, v in res.items() if isinstance(v, float)), flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", default="2048,8192")
    ap.add_argument("--parts", action="store_true",
                    help="the armed path's pieces instead (best of 5, behind GPU spinning)")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    if args.parts:
        rows = [parts(t, rank, dev) for rank in (16, 64)
                for t in map(int, args.tokens.split(","))]
        if args.json:
            write_json(args.json, env_record(dev), rows)
        return 0
    saved = {k: getattr(L, k) for k in ("_XGROUP", "_GXGROUP", "_arm_hot_desc")}
    paths = ("separate", "group", "hot")
    rows = []
    for rank in (16, 64):
        for t in map(int, args.tokens.split(",")):
            p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
            batch, items = _build(p, 1)
            w, x, _, out = items[0]
            per: dict[str, list[float]] = {k: [] for k in paths}
            launches = {k: dict.fromkeys(_GROUPS, 0) for k in paths}
            for r in range(args.rounds):
                for path in (paths if r % 2 == 0 else paths[::-1]):
                    _set(path, saved)
                    for k in list(L._plans(w).values()):  # re-arm under this path
                        if isinstance(k, L.AddPlan):
                            k.memo[5] = None
                    before = _counts(saved)
                    per[path].append(host_time_us(
                        lambda out=out, x=x, w=w, b=batch: ld.add_lora(out, x, w, b), dev,
                        n=100, rounds=3))
                    for k, v in _counts(saved).items():
                        launches[path][k] += v - before[k]
            _set("hot", saved)
            row = {"op": "add_lora", "T": t, "rank": rank, "adapters": 4,
                   "launches": launches,
                   **{f"host_us_{k}": statistics.median(v) for k, v in per.items()},
                   "rounds": per}
            rows.append(row)
            ran = ",".join(k for k, v in launches["hot"].items() if v)
            print(f"T={t} r{rank} ({ran}): " + "  ".join(
                f"{k} {row['host_us_' + k]:.2f}" for k in paths), flush=True)
    if args.json:
        write_json(args.json, env_record(dev), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
