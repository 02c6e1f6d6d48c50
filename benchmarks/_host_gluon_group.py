"""Eager ``add_lora`` on the Gluon plan against the Triton plan where the host may be the
bottleneck (H200, sixteenth session).

    python benchmarks/_host_gluon_group.py [--json PATH]

Two sets of weights with the same adapters: one planned with ``LORA_DISPATCH_GLUON=0`` (the
Triton shrink), one with the default policy (the Gluon shrink where it applies), qkv, 4
adapters, bf16. Alternating rounds (min over rounds of the median of each):

- ``host``: host µs per public call at T=128 with the Gluon plan forced (the GPU is far
  ahead, so this is the host's own cost of each plan's launch group);
- ``loop``: wall µs per call of back-to-back calls at T = 512, 1024, 2048 (whichever of
  host or GPU is slower sets it), and of a layer-like loop that runs the base GEMM
  (``torch.mm`` into ``base_out``) before each call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def _loop_us(fn, n: int = 200) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter_ns() - t0) / n / 1e3


def _ab(fns: dict, rounds: int = 7, n: int = 200) -> dict:
    for fn in fns.values():
        _loop_us(fn, 20)
    runs = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            runs[k].append(statistics.median(_loop_us(fn, n) for _ in range(3)))
    return {k: min(v) for k, v in runs.items()}


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

    fns = {"triton": lambda: ld.add_lora(out, x, w_off, batch),
           "gluon": lambda: ld.add_lora(out, x, w_on, batch)}
    if wt is not None:
        def layer(w):
            torch.mm(x, wt.t(), out=out)
            ld.add_lora(out, x, w, batch)

        fns["layer_triton"] = lambda: layer(w_off)
        fns["layer_gluon"] = lambda: layer(w_on)
    return fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    from lora_dispatch.kernels.triton import launch as L

    rows = []
    wt = torch.randn(6144, 4096, device="cuda", dtype=torch.bfloat16) / 64
    for rank in (16, 64):
        for t in (128, 512, 1024, 2048):
            forced = t == 128
            g0 = L._GGROUP.launches
            r = _ab(_calls(*_pair(rank, t, forced), wt=None if forced else wt))
            rows.append(dict(kind="host" if forced else "loop", rank=rank, T=t,
                             gluon_groups=L._GGROUP.launches - g0, **r))
            print(rows[-1], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "commit": os.environ.get("LORA_DISPATCH_COMMIT"),
                       "method": __doc__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
