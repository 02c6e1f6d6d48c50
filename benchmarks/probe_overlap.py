"""add_lora at prefill: the two-pass launches against one launch with per-tile flags (GPU).

    python benchmarks/probe_overlap.py [--json PATH] [--shapes 8192:64,2048:16]
        [--configs "lag,bm,bns,bk,rb,split,ebn,br,ncol,prefetch,warps,stages;..."] [--rounds N]

The shipped ``add_lora`` runs the shrink (reads ``x``) and then the expand (reads and writes
``out``): two streams one after the other, the first read-only. ``overlap_kernel`` runs
both in one launch, each token tile's expand programs starting once that tile's shrink
programs have counted in at its flag, so ``x`` and ``out`` stream side by side. This times
(cold L2, events, alternating rounds), per shape, the shipped two-pass ``add_lora`` and
overlap configs (the registry's, then one knob changed at a time: lead in tiles, rank blocks
per shrink program, K step, stages, warps, tile height), each checked against the shipped
output on the same inputs. The CPU runs it as a checked smoke run (interpreter).
"""

from __future__ import annotations

import dataclasses

import torch

from lora_dispatch.bench.kernels import (
    LAYERS,
    Problem,
    _build,
    min_bytes,
    probe_main,
    round_median,
)
from lora_dispatch.bench.timing import gpu_time_us
from lora_dispatch.devices import configs as C
from lora_dispatch.devices import current
from lora_dispatch.kernels.triton import launch as L


def _with(cfg: C.OverlapConfig, **kw) -> C.OverlapConfig | None:
    sc, ec = cfg.shrink, cfg.expand
    bm = kw.pop("bm", sc.block_m)
    warps = kw.pop("warps", cfg.num_warps)
    stages = kw.pop("stages", cfg.num_stages)
    sc = dataclasses.replace(sc, block_m=bm, block_k=kw.pop("bk", sc.block_k),
                             split_k=kw.pop("split", sc.split_k),
                             rank_blocks=kw.pop("rb", sc.rank_blocks), num_warps=warps,
                             num_stages=stages)
    ec = dataclasses.replace(ec, block_m=bm, num_warps=warps, num_stages=stages)
    return C.OverlapConfig(sc, ec, kw.pop("lag", cfg.lag), warps, stages)


def candidates(default: C.OverlapConfig, rank: int, slices: int) -> list[C.OverlapConfig]:
    """The registry's config, then one knob changed at a time."""
    pairs = slices * -(-rank // default.shrink.block_n)
    alts = [dict(lag=v) for v in (2, 4, 16, 32)]
    alts += [dict(rb=v) for v in sorted({1, min(4, pairs)})]
    alts += [dict(bk=v) for v in (32, 128)]
    alts += [dict(stages=v) for v in (2, 4)]
    alts += [dict(warps=8), dict(bm=64 if default.shrink.block_m != 64 else 32)]
    alts += [dict(split=v) for v in (2, 4)]
    out = [default]
    for kw in alts:
        cfg = _with(default, **kw)
        if cfg not in out:
            out.append(cfg)
    return out


def parse_configs(spec: str, rank: int) -> list[C.OverlapConfig]:
    """``"lag,bm,bns,bk,rb,split,ebn,br,ncol,prefetch,warps,stages;..."`` as overlap configs."""
    out = []
    for item in filter(None, spec.split(";")):
        lag, bm, bns, bk, rb, split, ebn, br, ncol, pre, warps, stages = map(
            int, item.split(","))
        out.append(C.OverlapConfig(C.ShrinkConfig(bm, bns, bk, split, warps, stages, rb),
                                   C.ExpandConfig(bm, ebn, br, warps, stages, ncol, bool(pre)),
                                   lag, warps, stages))
    return out


def _label(cfg: C.OverlapConfig | None) -> str:
    if cfg is None:
        return "two-pass (shipped)"
    sc, ec = cfg.shrink, cfg.expand
    return (f"lag={cfg.lag} bm={sc.block_m} bns={sc.block_n} bk={sc.block_k} "
            f"rb={sc.rank_blocks} split={sc.split_k} ebn={ec.block_n} br={ec.block_r} "
            f"ncol={ec.col_blocks} pre={int(ec.prefetch)} w={cfg.num_warps} st={cfg.num_stages}")


def live_configs(t: int, rank: int, dev: torch.device,
                 cands: list[C.OverlapConfig]) -> tuple[Problem, list]:
    """One qkv input set (bf16, 4 adapters) and, on it, the shipped ``add_lora`` then every
    config of ``cands`` that builds: ``(config or None, launch, max |diff| against the
    shipped output)``; configs that fail are printed and skipped."""
    p = Problem("add_lora", 4096, t, rank, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    pristine = out.clone()
    ref = pristine.clone()
    L.add_lora(ref, x, w, batch)
    live: list = [(None, lambda: L.add_lora(out, x, w, batch), 0.0)]
    for cfg in cands:
        try:
            plan = L._overlap_plan(w, t, cfg)
            chk = pristine.clone()
            L._overlap(plan, chk, x, w, batch, t)
            err = (chk.float() - ref.float()).abs().max().item()
        except Exception as exc:  # a config that fails to compile is reported and skipped
            print(f"T={t} r={rank} {_label(cfg)} failed: {exc!r}"[:300], flush=True)
            continue
        live.append((cfg, lambda plan=plan: L._overlap(plan, out, x, w, batch, t), err))
    return p, live


def shape(t: int, rank: int, dev: torch.device, copy: float | None, rows: list[dict],
          configs: str = "", rounds: int = 1) -> None:
    outs = LAYERS["add_lora"]
    default = C.overlap_config(current(dev), t, 4096, sum(outs), rank, 2, len(outs))
    cands = candidates(default, rank, len(outs)) if not configs else (
        [default] + [c for c in parse_configs(configs, rank) if c != default])
    p, live = live_configs(t, rank, dev, cands)
    nbytes = min_bytes(p)
    for rnd in range(rounds):
        for cfg, fn, err in live:
            us = (gpu_time_us(fn, dev, warmup_ms=5, rep_ms=30) if dev.type == "cuda"
                  else float("nan"))
            row = dict(T=t, rank=rank, round=rnd, config=_label(cfg),
                       default=cfg == default, add_us=us,
                       pct_copy=100 * nbytes / us / 1e3 / copy if copy else float("nan"),
                       max_diff_vs_shipped=err)
            rows.append(row)
            print(f"T={t} r={rank} {'*' if cfg == default else ' '} {_label(cfg):78s} "
                  f"{us:7.1f} us ({row['pct_copy']:.1f}%)  diff {err:.3g}", flush=True)
    if rounds > 1:
        for cfg, *_ in live:
            med = round_median(rows, "add_us", T=t, rank=rank, config=_label(cfg))
            print(f"T={t} r={rank} {_label(cfg)}: median {med:.1f} us over {rounds} rounds",
                  flush=True)


def _spec(spec: str, dev: torch.device, copy: float | None, rows: list[dict], args) -> None:
    t, rank = map(int, spec.split(":"))
    shape(t, rank, dev, copy, rows, args.configs, args.rounds)


def main(argv: list[str] | None = None) -> int:
    def extra(ap):
        ap.add_argument("--configs", default="",
                        help="'lag,bm,bns,bk,rb,split,ebn,br,ncol,prefetch,warps,stages;...' "
                             "instead of the one-knob sweep")
        ap.add_argument("--rounds", type=int, default=1,
                        help="time every config this many times, in alternating rounds")

    return probe_main(argv, __doc__, "8192:64,8192:16,4096:64,2048:64,2048:16", _spec, extra)


if __name__ == "__main__":
    raise SystemExit(main())
