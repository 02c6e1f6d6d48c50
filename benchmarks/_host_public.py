"""Host time of the public ``lora_shrink`` / ``lora_expand`` with and without the Gluon kernels'
native per-call paths (GPU).

    python benchmarks/_host_public.py [--json PATH] [--rounds 3]

The benchmark's shrink and expand rows (qkv 4096 -> 6144, bf16, 4 adapters, rank 16 / 64)
at prefill run the Gluon shrink (Hopper: T = 1024-4096 at rank 64, 2048-4096 at rank 16) and
the Gluon expand (rank 64, T >= 4096). Paths, in alternating rounds (best of the rounds' medians):

- ``python``: the Gluon groups (``_GZGROUP``, ``_GSGROUP``, ``_GEGROUP``) off: the fill and
  the Gluon shrink, or the Gluon expand, launch one by one from Python with descriptors
  built there (the tree before the thirty-sixth session);
- ``native``: those groups on: after two calls with the same weights and batch the public
  op takes its native per-call path, which encodes ``x``'s / ``out``'s descriptor in C.

Shapes the Gluon kernels do not take run the same code either way (a control). Each figure
is :func:`host_time_us`: the host's own µs per public call, queued behind GPU spinning.
``armed``: whether the op's per-call entry for ``T`` existed after the ``native`` rounds.
"""

from __future__ import annotations

import argparse

import torch

import lora_dispatch as ld
from lora_dispatch import ops
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import env_record, host_time_us, write_json
from lora_dispatch.kernels.triton import launch as L

_GLUON_GROUPS = ("_GZGROUP", "_GSGROUP", "_GEGROUP")
SHAPES = ((16, 64), (16, 1024), (16, 2048), (16, 4096), (64, 1024), (64, 2048), (64, 4096),
          (64, 8192))


def _set(path: str, saved: dict, w) -> None:
    for name in _GLUON_GROUPS:
        setattr(L, name, saved[name] if path == "native" else None)
    for key in ("_fl_hot_s", "_fl_hot_e", "_fl_pub"):  # bind and arm afresh
        w.__dict__.pop(key, None)
    ops._hot_shrink = ops._hot_expand = None


def measure(op: str, rank: int, t: int, dev: torch.device, rounds: int, saved: dict) -> dict:
    p = Problem(op, 4096, t, rank, 4, torch.bfloat16, dev, (4096, 1024, 1024))
    batch, (item,) = _build(p, 1)
    w, x, y, out = item
    if op == "shrink":
        def fn():
            return ld.lora_shrink(x, w, batch)
        plan = L._pick(L.plan_for("shrink", w, t), x, w)
        gluon = L._desc_kind(plan, x, w) == 2
    else:
        def fn():
            return ld.lora_expand(y, w, batch, out)
        g = L.plan_for("expand", w, t, cap=L._cap(w, out)).gluon
        gluon = g is not None and L._gluon_expand_ok(g, out, w)
    res: dict[str, list[float]] = {"python": [], "native": []}
    for r in range(rounds):
        for path in ("native", "python") if r % 2 == 0 else ("python", "native"):
            _set(path, saved, w)
            res[path].append(host_time_us(fn, dev, n=100, rounds=5))
            if path == "native":
                table = w.__dict__.get("_fl_hot_s" if op == "shrink" else "_fl_hot_e", {})
                armed = table.get(t, [None])[0] is not None
    return {"op": op, "rank": rank, "T": t, "gluon": gluon, "armed": armed,
            "python_us": round(min(res["python"]), 2), "native_us": round(min(res["native"]), 2),
            "python_rounds": [round(v, 2) for v in res["python"]],
            "native_rounds": [round(v, 2) for v in res["native"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    saved = {name: getattr(L, name) for name in _GLUON_GROUPS}
    rows = []
    try:
        for rank, t in SHAPES:
            for op in ("shrink", "expand"):
                row = measure(op, rank, t, dev, args.rounds, saved)
                rows.append(row)
                print(row, flush=True)
    finally:
        for name, g in saved.items():
            setattr(L, name, g)
    if args.json:
        write_json(args.json, env_record(dev), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
