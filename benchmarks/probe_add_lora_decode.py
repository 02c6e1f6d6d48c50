"""Decode ``add_lora`` (qkv) over many adapters: K splits x expand tilings (GPU, CUDA graphs).

    python benchmarks/probe_add_lora_decode.py [--json PATH] [--adapters 1,4,16]
        [--layer qkv|gate_up]

For hidden 4096, qkv (4096 + 1024 + 1024; ``--layer gate_up``: 2 x 14336), bf16, each (rank,
T, adapters) it replays the
two-pass ``add_lora`` from a CUDA graph with every K split of ``--splits`` and every expand
tiling of ``--expand`` (``BMxBNxNCOL[xSTAGES][p]``, ``p``: prefetch; ``default``: the
registry's for that many partial products; a ``wN`` before ``p`` sets the warps, e.g.
``32x128x1x1w8``), the shipped plan first. Each variant's output
is checked against the shipped plan's before it is timed. With ``--parts`` the expand alone
is timed per split too (its partial products read from a zeroed workspace), to show what
summing them costs. ``--op expand|qkv_expand|gate_up_expand`` times the public expand's case
instead (one product, no partials to sum) for every tiling, for that op's slices.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace

import torch

from lora_dispatch.bench.kernels import LAYERS, Problem, _build
from lora_dispatch.bench.timing import env_record, graph_time_us, write_json
from lora_dispatch.devices import configs as C
from lora_dispatch.devices import current
from lora_dispatch.kernels.triton import launch as L


def _expand_cfg(spec: str, default: C.ExpandConfig) -> C.ExpandConfig:
    if spec == "default":
        return default
    body, _, warps = spec.rstrip("p").partition("w")
    parts = body.split("x")
    bm, bn, ncol = map(int, parts[:3])
    stages = int(parts[3]) if len(parts) > 3 else default.num_stages
    return replace(default, block_m=bm, block_n=bn, col_blocks=ncol, num_stages=stages,
                   num_warps=int(warps) if warps else default.num_warps,
                   prefetch=spec.endswith("p"))


def _checked(make, base: torch.Tensor, want: torch.Tensor, out: torch.Tensor,
             dev: torch.device, what: str) -> float | None:
    """Graph-replay µs of ``run(out)``, ``run = make()``, once ``run`` on a copy of ``base``
    matched ``want``; ``None`` after printing why where it did not, or did not build."""
    try:
        run = make()
        got = base.clone()
        run(got)
        err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
        if not err < 2e-2:
            print(f"{what}: wrong ({err:.3g})", flush=True)
            return None
        return graph_time_us(lambda: run(out), dev)
    except Exception as exc:  # a variant that fails to build is reported and skipped
        print(f"{what} failed: {exc!r}"[:300], flush=True)
        return None


def _row(res: dict, what: str, **key) -> dict:
    print(f"{what} " + " ".join(f"{k}={v:.2f}" for k, v in res.items() if v is not None),
          flush=True)
    return dict(**key, **{k: None if v is None else round(v, 3) for k, v in res.items()})


def _expand_only(t: int, rank: int, adapters: int, op: str, expands: list[str],
                 dev: torch.device) -> dict:
    """The public expand's case (one product, no partials) for every tiling, checked."""
    p = Problem(op, 4096, t, rank, adapters, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, _, y, out = items[0]
    y1 = y.unsqueeze(0)  # [1, S, T, R]
    e0 = C.expand_config(current(dev), t, w.total_out, w.max_rank, 2,
                         widths=tuple(w.out_features))
    base = out.clone()  # timing adds into out
    want = base.clone()
    L._launch_expand(L.plan_for("expand", w, t), y1, w, batch, want, t)
    what = f"{op} T={t} r={rank} a={adapters}"

    def make(es: str):
        ep = L._expand_plan(w, t, 1, cfg=_expand_cfg(es, e0))
        return lambda o: L._launch_expand(ep, y1, w, batch, o, t)

    res = {f"expand1/{es}": _checked(lambda es=es: make(es), base, want, out, dev,
                                     f"{what} {es}") for es in expands}
    return _row(res, what, op=op, T=t, rank=rank, adapters=adapters, shipped_expand=str(e0))


def _probe(t: int, rank: int, adapters: int, splits: list[int], expands: list[str],
           parts: bool, dev: torch.device, layer: str = "qkv") -> dict:
    p = Problem("add_lora", 4096, t, rank, adapters, torch.bfloat16, dev,
                outs=LAYERS["gate_up_expand"] if layer == "gate_up" else None)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    info = current(dev)
    shipped = L.plan_for("add", w, t)
    widths = tuple(w.out_features)
    base = out.clone()  # timing adds into out
    want = base.clone()
    L._two_pass(shipped, want, x, w, batch, t)
    what = f"{layer} T={t} r={rank} a={adapters}"
    res: dict[str, float | None] = {
        f"shipped/split{shipped.shrink.split}": graph_time_us(
            lambda: L._two_pass(shipped, out, x, w, batch, t), dev)}

    def make(split: int, es: str):
        cfg = _expand_cfg(es, C.expand_config(info, t, w.total_out, w.max_rank, 2,
                                              widths=widths, partials=split))
        plan = L._two_pass_plan(w, t, split, expand_cfg=cfg)
        return lambda o: L._two_pass(plan, o, x, w, batch, t)

    for split, es in itertools.product(splits, expands):
        res[f"split{split}/{es}"] = _checked(lambda split=split, es=es: make(split, es), base,
                                             want, out, dev, f"{what} split{split} {es}")
    if parts:
        for split in splits:
            plan = L._two_pass_plan(w, t, split)
            ws = torch.zeros((plan.shrink.split, w.num_slices, t, w.max_rank), device=dev)
            res[f"expand_alone/split{plan.shrink.split}"] = graph_time_us(
                lambda plan=plan, ws=ws: L._launch_expand(plan.expand, ws, w, batch, out, t,
                                                          plan.ys), dev)
    best = min((k for k in res if not k.startswith("expand") and res[k]),
               key=lambda k: res[k], default=None)
    head = f"{what} best {best}={res[best]:.2f} |" if best else what
    return _row(res, head, layer=layer, T=t, rank=rank, adapters=adapters,
                shipped_expand=str(shipped.expand.meta))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="16,64")
    ap.add_argument("--ranks", default="16,64")
    ap.add_argument("--adapters", default="1,4,16")
    ap.add_argument("--splits", default="2,4,8")
    ap.add_argument("--expand", default="default,16x128x1,16x128x1p,16x256x1x2,16x64x2,16x64x4")
    ap.add_argument("--parts", action="store_true")
    ap.add_argument("--op", default="add_lora",
                    choices=("add_lora", "expand", "qkv_expand", "gate_up_expand"),
                    help="an expand op: only the public expand's tilings, no shrink")
    ap.add_argument("--layer", default="qkv", choices=("qkv", "gate_up"),
                    help="add_lora's weights: qkv (4096 + 1024 + 1024) or gate_up (2 x 14336)")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    shapes = itertools.product(ints(args.ranks), ints(args.tokens), ints(args.adapters))
    if args.op == "add_lora":
        rows = [_probe(t, r, a, ints(args.splits), args.expand.split(","), args.parts, dev,
                       args.layer) for r, t, a in shapes]
    else:
        rows = [_expand_only(t, r, a, args.op, args.expand.split(","), dev)
                for r, t, a in shapes]
    if args.json:
        write_json(args.json, env_record(dev), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
