"""The public decode shrink's K-split orders, side by side (GPU; CUDA-graph replay and events).

    python benchmarks/probe_shrink_ticket.py [--json PATH] [--rounds 3]

For hidden 4096, ranks 16 / 64, 1 / 4 / 16 adapters (one token each, round-robin) and
T = 1, 16, 64, 256, over the benchmark's rotating weight sets (weights from DRAM):

- ``fill``: ``lora_shrink`` as a graph holds it: the zero fill, then the split-K atomics
  (the same two launches eagerly);
- ``ticket``: :mod:`shrink_ticket_kernel` (the eager path) in one launch, on a ticket buffer
  zeroed once, outside the graph.

``shrink-ticket-orders-…json`` (commit ``ee62eee``) holds a third variant, ``late``: that
commit's ``EARLY=0`` order (the thirty-fourth session's; its ``early`` is the one shipped).
Every variant's ``y`` after the timed replays is checked against the reference backend's
(torch matmuls in float32 over the same inputs, no Triton kernel).
Rounds alternate the variants' order; the JSON keeps every round (``graph_us``: median of 20
replays of 20 calls; ``gpu_us``: events).
"""

from __future__ import annotations

import argparse
import itertools

import torch

from lora_dispatch.bench.kernels import Problem, _build, _cycle, min_bytes
from lora_dispatch.bench.timing import env_record, gpu_time_us, graph_time_us, write_json
from lora_dispatch.kernels import reference
from lora_dispatch.kernels.triton import launch as L

VARIANTS = ("fill", "ticket")


def _calls(p: Problem, sets: int) -> tuple[dict, list, list]:
    batch, items = _build(p, sets)
    fns: dict[str, list] = {v: [] for v in VARIANTS}
    outs, wants = [], []
    for w, x, _, _ in items:
        wants.append(reference.shrink(x, w, batch).double())
        sp = L._pick(L.plan_for("shrink", w, p.t), x, w)
        tp = L._ticket_plan(w, p.t, None, sp)
        assert tp is not None and not sp.meta["FILL"], "no ticket plan"
        n = w.num_slices * p.t * w.max_rank
        yf = torch.full((w.num_slices, p.t, w.max_rank), float("nan"), device=x.device)

        def fill(x=x, w=w, sp=sp, yf=yf, n=n):
            L.zero_kernel[(L._cdiv(n, L.ZERO_BLOCK),)](yf, n, L.ZERO_BLOCK,
                                                        num_warps=L._ZERO_WARPS, num_stages=1)
            L._launch_shrink(sp, x, w, batch, yf, p.t, (0, p.t * w.max_rank, w.max_rank, 1))

        fns["fill"].append(fill)
        outs.append(("fill", yf, len(wants) - 1))
        tk = torch.zeros(2 * tp.words, dtype=torch.int32, device=x.device)
        y = torch.full((w.num_slices, p.t, w.max_rank), float("nan"), device=x.device)
        args = L._ticket_args(tp, x, x.stride(), w, batch, tk, y, p.t)

        def ticket(args=args, tp=tp):
            L.shrink_ticket_kernel[tp.grid](*args, *tp.cx, num_warps=tp.num_warps,
                                            num_stages=tp.num_stages)

        fns["ticket"].append(ticket)
        outs.append(("ticket", y, len(wants) - 1))
    return fns, outs, wants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="1,16,64,256")
    ap.add_argument("--ranks", default="16,64")
    ap.add_argument("--adapters", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    rows = []
    for rank, a, t in itertools.product(map(int, args.ranks.split(",")),
                                        map(int, args.adapters.split(",")),
                                        map(int, args.tokens.split(","))):
        p = Problem("shrink", 4096, t, rank, a, torch.bfloat16, dev)
        sets = max(1, min(8, (64 << 20) // max(min_bytes(p), 1)))
        fns, outs, wants = _calls(p, sets)
        for rnd in range(args.rounds):
            order = VARIANTS[rnd % 2:] + VARIANTS[:rnd % 2]
            for v in order:
                g = graph_time_us(_cycle(fns[v]), dev, inner=max(sets, 20), reps=20)
                e = gpu_time_us(fns[v][0], dev, warmup_ms=5, rep_ms=20)
                rows.append(dict(T=t, rank=rank, adapters=a, variant=v, round=rnd,
                                 graph_us=g, gpu_us=e))
        torch.cuda.synchronize()
        for v, y, i in outs:
            err = ((y.double() - wants[i]).norm() / wants[i].norm()).item()
            assert err < 1e-3 and not y.isnan().any(), (v, t, rank, a, err)
        line = " ".join(
            f"{v}={min(r['graph_us'] for r in rows[-2 * args.rounds:] if r['variant'] == v):.2f}"
            for v in VARIANTS)
        print(f"r{rank} a{a} T={t} graph best: {line}", flush=True)
        if args.json:
            write_json(args.json, env_record(dev), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
