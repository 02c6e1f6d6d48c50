"""A/B the Triton kernels of several source trees on one GPU, in alternating rounds.

    python benchmarks/ab_trees.py --trees old=.ab/old,new=. [--rounds 2] [--shapes ...]
        [--adapters 4] [--json PATH]
    python benchmarks/ab_trees.py --trees off=.+LORA_DISPATCH_GLUON=0,on=.   # one tree, two envs

Each (round, tree) runs this script's worker in a fresh process with ``PYTHONPATH=<tree>``,
so the kernels, configs and launch code all come from that tree (make one with
``git archive <commit> | tar -x -C .ab/old``); ``path+KEY=VALUE+...`` also sets environment
variables for that tree's worker. The worker times, per shape (bf16, hidden
4096, ``--adapters`` adapters (4), ``op:T:rank`` with the ops of ``bench_kernels.py``;
``op:T:rank:max_rank`` loads rank-``rank`` adapters into weights sized for ``max_rank``):
prefill (T > 256) with a cold L2 (median of CUDA-event times), decode as CUDA-graph replay
per call over 8 weight / input sets; ``op:T:rank:host`` times the host's own µs per public
call instead (the GPU kept busy, median of 15 rounds of 100 calls). Trees alternate within
every round (host clocks and GPU temperature drift between rounds); the table keeps each
tree's fastest round and the ratio to the first tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_SHAPES = (
    "shrink:8192:16,shrink:8192:64,expand:8192:16,expand:8192:64,qkv_expand:8192:16,"
    "qkv_expand:8192:64,gate_up_expand:8192:16,add_lora:8192:16,add_lora:8192:64,"
    "shrink:2048:16,expand:2048:64,qkv_expand:2048:64,add_lora:2048:16,add_lora:2048:64,"
    "shrink:1:16,shrink:64:16,expand:16:16,qkv_expand:64:16,gate_up_expand:16:16,"
    "gate_up_expand:64:16,add_lora:1:16,add_lora:64:16,add_lora:256:64"
)


def _host_us(fn, dev, n: int = 100, rounds: int = 15) -> float:
    """Median host µs per call of ``fn`` over ``rounds`` rounds of ``n`` calls, each round
    queued behind ~``n * 100`` µs of GPU spinning: only the host's own time is measured.
    Kept here rather than ``timing.host_time_us`` so that every tree is timed alike (trees
    before the twentieth session have a ``host_time_us`` that does not hold the GPU)."""
    import statistics
    import time

    import torch

    from lora_dispatch.bench.timing import _busy

    for _ in range(20):
        fn()
    per = []
    for _ in range(rounds):
        torch.cuda.synchronize(dev)
        _busy(n * 100)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        per.append((time.perf_counter_ns() - t0) / n / 1e3)
    torch.cuda.synchronize(dev)
    return statistics.median(per)


def _pool(p, max_rank: int, sets: int):
    """``bench_kernels._build`` for rank-``p.rank`` adapters in weights sized for ``max_rank``
    (public API only: any tree's worker runs it); ``y`` is zero past the rank."""
    import torch

    import lora_dispatch as ld
    from lora_dispatch.bench.kernels import _outs, _slots

    outs = _outs(p)
    slots = _slots(p)
    batch = ld.LoRABatch.from_segments([1] * len(slots), slots, device=p.device)
    g = torch.Generator(device=p.device).manual_seed(0)
    items = []
    for _ in range(sets):
        w = ld.LoRAWeights(p.adapters, p.hidden, outs, max_rank, dtype=p.dtype, device=p.device)
        for s in range(p.adapters):
            a = torch.randn(len(outs) * p.rank, p.hidden, generator=g, device=p.device)
            a = list((a / p.hidden**0.5).split(p.rank))
            b = torch.randn(sum(outs), p.rank, generator=g, device=p.device) / p.rank**0.5
            w.load(s, a, list(b.split(list(outs))), 0.5)
        x = torch.randn(p.t, p.hidden, generator=g, device=p.device).to(p.dtype)
        y = torch.zeros(len(outs), p.t, max_rank, device=p.device)  # [S, T, max_rank]
        y[:, :, :p.rank] = torch.randn(len(outs), p.t, p.rank, generator=g, device=p.device)
        out = torch.randn(p.t, sum(outs), generator=g, device=p.device).to(p.dtype)
        items.append((w, x, y, out))
    return batch, items


def _worker(shapes: str, adapters: int = 4) -> None:
    import torch

    from lora_dispatch.bench.kernels import Problem, _build, _call, _cycle, _public, min_bytes
    from lora_dispatch.bench.timing import copy_bandwidth_gbs, gpu_time_us, graph_time_us

    impl = __import__("lora_dispatch.kernels.triton", fromlist=["add_lora"])
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    for spec in shapes.split(","):
        op, t, rank, *how = spec.split(":")
        p = Problem(op, 4096, int(t), int(rank), adapters, torch.bfloat16, dev)
        build = _build
        if how and how[0].isdigit():
            max_rank = int(how.pop(0))
            build = lambda p, sets, m=max_rank: _pool(p, m, sets)  # noqa: E731
        if how == ["host"]:
            batch, items = build(p, 1)
            row = dict(shape=spec, method="host",
                       us=_host_us(_public(p, batch, items[0]), dev))
        elif p.t > 256:
            batch, items = build(p, 1)
            us = gpu_time_us(_call(p, impl, batch, items[0]), dev, warmup_ms=10, rep_ms=40)
            pct = 100 * min_bytes(p) / (us * 1e-6) / 1e9 / copy
            row = dict(shape=spec, method="cold", us=us, pct_copy=pct)
        else:
            batch, items = build(p, 8)
            fn = _cycle([_call(p, impl, batch, it) for it in items])
            row = dict(shape=spec, method="graph", us=graph_time_us(fn, dev, inner=24, reps=20))
        print("ROW " + json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", required=True, help="name=path,... (first is the baseline)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default=_SHAPES)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.shapes, args.adapters)
        return 0
    trees, tree_env = [], {}
    for kv in args.trees.split(","):
        name, spec = kv.split("=", 1)
        path, *pairs = spec.split("+")
        trees.append((name, path))
        tree_env[name] = dict(pair.split("=", 1) for pair in pairs)
    for name, path in trees:
        if not (Path(path) / "lora_dispatch" / "__init__.py").exists():
            ap.error(f"tree {name}: no lora_dispatch package under {path!r}")
    best: dict[tuple[str, str], dict] = {}
    rounds = []
    for r in range(args.rounds):
        for name, path in trees:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(path), PYTHONUNBUFFERED="1",
                       **tree_env[name])
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", "--trees", args.trees,
                 "--shapes", args.shapes, "--adapters", str(args.adapters)], env=env,
                capture_output=True, text=True, cwd=os.path.abspath(path))
            if proc.returncode:
                print(f"round {r} tree {name} failed:\n{proc.stderr[-3000:]}", flush=True)
            for line in proc.stdout.splitlines():
                if line.startswith("ROW "):
                    row = dict(json.loads(line[4:]), tree=name, round=r)
                    rounds.append(row)
                    key = (name, row["shape"])
                    if key not in best or row["us"] < best[key]["us"]:
                        best[key] = row
            print(f"round {r} tree {name} done", flush=True)
    base = trees[0][0]
    shapes = list(dict.fromkeys(row["shape"] for row in rounds))
    print(f"{'shape':24s} {'method':6s} " + " ".join(f"{n:>10s}" for n, _ in trees) + "  ratio")
    for spec in shapes:
        cells = [best.get((n, spec)) for n, _ in trees]
        us = [f"{c['us']:10.2f}" if c else f"{'-':>10s}" for c in cells]
        ratio = " ".join(f"{c['us'] / cells[0]['us']:.3f}" for c in cells[1:]
                         if c and cells[0])
        method = next(c["method"] for c in cells if c)
        print(f"{spec:24s} {method:6s} " + " ".join(us) + f"  {ratio}")
    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import torch

        from lora_dispatch.bench.timing import env_record, write_json

        meta = {**env_record(torch.device("cuda")), "trees": dict(trees), "env": tree_env,
                "baseline": base, "rounds": args.rounds, "adapters": args.adapters}
        write_json(args.json, meta, rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
