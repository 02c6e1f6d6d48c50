"""add_lora's shrink at prefill: every (slice, rank block) in one program, split K (GPU).

    python benchmarks/probe_add_lora_shrink.py [--json PATH] [--shapes 8192:64,4096:64]
        [--configs "bm,rb,bk,split,warps,stages;..."] [--rounds N]

At qkv rank 64 the shipped shrink runs one 64-column block per program, so three programs
per token tile each stream that tile's ``x`` from L2; one program holding all three blocks
leaves only 128 programs at T=8192 (under one wave of an H200), which the ``sweep_shrink``
grids never split at T >= 4096. This times, per candidate shrink config: the shrink alone
(workspace mode, as ``add_lora`` launches it) and the whole two-pass ``add_lora`` with that
shrink and the expand the registry ships for the resulting split count (PDL as shipped),
checked against the shipped ``add_lora`` on the same inputs. Cold L2, event timing.
"""

from __future__ import annotations

import itertools

import torch

from lora_dispatch.bench.kernels import Problem, _build, min_bytes, probe_main, round_median
from lora_dispatch.bench.timing import gpu_time_us
from lora_dispatch.devices import configs as C
from lora_dispatch.devices import current
from lora_dispatch.kernels.triton import launch as L


def candidates(rank: int, t: int, default: C.ShrinkConfig) -> list[C.ShrinkConfig]:
    """The shipped config first, then one-block and all-blocks programs over BM x BK x
    split x warps (4 stages, 3 where 4 pass 200 KB of shared memory)."""
    bn = max(16, min(64, C.next_pow2(rank)))
    pairs = 3 * -(-rank // bn)
    out = [default]
    for bm, rb, bk, split, warps in itertools.product(
            (64, 128), sorted({1, min(4, pairs)}), (64, 128), (1, 2, 4), (4, 8)):
        rows_n = bn * rb
        stages = 4 if 4 * (bm + rows_n) * bk * 2 <= 200 * 1024 else 3
        if stages * (bm + rows_n) * bk * 2 > 200 * 1024:
            continue
        if bm * rows_n > 96 * 32 * warps or (warps == 8 and bm * rows_n <= 64 * 64):
            continue  # accumulators past 96 registers a thread, or 8 warps on a small tile
        if split == 4 and bm * rb <= 64:
            continue
        cfg = C.ShrinkConfig(bm, bn, bk, split, warps, stages, rb)
        if cfg not in out:
            out.append(cfg)
    return out


def parse_configs(spec: str, rank: int) -> list[C.ShrinkConfig]:
    """``"bm,rb,bk,split,warps,stages;..."`` as shrink configs (BN from the rank)."""
    bn = max(16, min(64, C.next_pow2(rank)))
    out = []
    for item in filter(None, spec.split(";")):
        bm, rb, bk, split, warps, stages = map(int, item.split(","))
        out.append(C.ShrinkConfig(bm, bn, bk, split, warps, stages, rb))
    return out


def shape(t: int, rank: int, dev: torch.device, copy: float, rows: list[dict],
          configs: str = "", rounds: int = 1) -> None:
    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    default = C.shrink_config(current(dev), t, 4096, w.max_rank, 2, False, slices=w.num_slices)
    pristine = out.clone()  # the timed calls keep adding into out
    ref = pristine.clone()
    L.add_lora(ref, x, w, batch)
    nbytes = min_bytes(p)
    cands = candidates(rank, t, default) if not configs else (
        [default] + [c for c in parse_configs(configs, rank) if c != default])
    live = []
    for cfg in cands:
        try:
            plan = L._two_pass_plan(w, t, shrink_cfg=cfg)
            y = torch.empty((plan.shrink.split, w.num_slices, t, w.max_rank), device=dev)
            chk = pristine.clone()
            L._two_pass(plan, chk, x, w, batch, t)
            err = (chk.float() - ref.float()).abs().max().item()
            L._launch_shrink(plan.shrink, x, w, batch, y, t)
        except Exception as exc:  # a config that fails to compile is reported and skipped
            print(f"T={t} r={rank} {cfg} failed: {exc!r}"[:240], flush=True)
            continue
        live.append((cfg, plan, y, err))
    for rnd in range(rounds):
        for cfg, plan, y, err in live:
            sp = plan.shrink
            shrink_us = gpu_time_us(lambda sp=sp, y=y: L._launch_shrink(sp, x, w, batch, y, t),
                                    dev, warmup_ms=5, rep_ms=20)
            add_us = gpu_time_us(lambda plan=plan: L._two_pass(plan, out, x, w, batch, t),
                                 dev, warmup_ms=5, rep_ms=30)
            row = dict(T=t, rank=rank, round=rnd, default=cfg == default, shrink_us=shrink_us,
                       add_us=add_us,
                       pct_copy=100 * nbytes / add_us / 1e3 / copy if copy else float("nan"),
                       max_diff_vs_shipped=err, split_eff=sp.split, **cfg.__dict__)
            rows.append(row)
            print(f"T={t} r={rank} {'*' if cfg == default else ' '} bm={cfg.block_m} "
                  f"rb={cfg.rank_blocks} bk={cfg.block_k} split={sp.split} w={cfg.num_warps} "
                  f"st={cfg.num_stages}: shrink {shrink_us:6.1f} us  add_lora {add_us:6.1f} us "
                  f"({row['pct_copy']:.1f}%)  diff {err:.3g}", flush=True)
    if rounds > 1:
        for cfg, *_ in live:
            med = round_median(rows, "add_us", T=t, rank=rank, **cfg.__dict__)
            print(f"T={t} r={rank} {cfg}: add_lora median {med:.1f} us over {rounds} rounds",
                  flush=True)


def _spec(spec: str, dev: torch.device, copy: float, rows: list[dict], args) -> None:
    t, rank = map(int, spec.split(":"))
    shape(t, rank, dev, copy, rows, args.configs, args.rounds)


def main(argv: list[str] | None = None) -> int:
    def extra(ap):
        ap.add_argument("--configs", default="",
                        help="'bm,rb,bk,split,warps,stages;...' instead of the candidate grid")
        ap.add_argument("--rounds", type=int, default=1,
                        help="time every config this many times, in alternating rounds")

    return probe_main(argv, __doc__, "8192:64,4096:64", _spec, extra)


if __name__ == "__main__":
    raise SystemExit(main())
