"""Mixed-rank prefill: the Triton kernels against the Gluon ones over ``max_rank`` (GPU).

    python benchmarks/ab_mixed_ranks.py [--json PATH] [--shapes 8192:16/64:4,...]
                                        [--rounds 3]

Each shape is ``T:ranks:adapters[:max_rank]``: qkv weights (hidden 4096, bf16) with
``max_rank`` (default the largest rank) whose ``adapters`` slots load the ranks of the
``/``-list in turn, and ``T`` tokens in one segment per adapter. The Gluon kernels' work
follows ``max_rank``; the registry takes them for such weights while the bytes they read past
the real ranks stay small (``configs.gluon_takes_ranks``), and eager calls run the plans of
weights whose ``max_rank`` is the loaded ranks' power-of-two box (``launch._cap``: configs,
rank blocks and Gluon boxes). Variants (``launch`` patched):

- ``shipped``: the registry as it is;
- ``triton``: the Triton shrink and expand (the choice for any loaded rank below
  ``max_rank`` up to the twentieth session);
- ``gluon``: the Gluon shrink and the Gluon expand where the registry has them for ``T``;
- ``gluon-shrink``: the Gluon shrink, the Triton expand;
- ``no-cap`` (shapes whose ``max_rank`` is above the loaded ranks' box): ``shipped`` with
  the plans for ``max_rank``.

Before the twenty-second session the eager cut was the Gluon shrink's ``A`` boxes alone
(``no-cut`` in the files of then: that cut off). ``ab-mixed-ranks-cut-...json`` also has
``cut-shrink`` (the shrink's boxes cut) against ``shipped`` when that cut the expand's ``B``
boxes too (``724b397``).

``add_lora`` and the qkv ``lora_expand`` run through the backend; every variant's delta must
match the reference backend's (float32 accumulation, relative norm 1e-2) before it is timed:
cold L2, median of CUDA events, ``--rounds`` alternating rounds (median of rounds), percent
of the copy bandwidth from the minimal bytes (``x`` once, each used adapter's real-rank
weights once, ``out`` read and written).
"""

from __future__ import annotations

import torch

import lora_dispatch as ld
from lora_dispatch.bench.kernels import probe_main
from lora_dispatch.bench.timing import gpu_time_us
from lora_dispatch.devices import configs as C
from lora_dispatch.kernels import reference as ref_impl
from lora_dispatch.kernels import triton as impl
from lora_dispatch.kernels.triton import launch as L

SHAPES = ("8192:16/64:4,8192:8/16/32/64:4,8192:16:4:64,8192:8/16/32/64:16,"
          "8192:8/16/32/64:128,4096:16/64:4,2048:16/64:4")
OUTS = (4096, 1024, 1024)
HIDDEN = 4096


def _build(t: int, ranks: list[int], adapters: int, max_rank: int, dev: torch.device):
    g = torch.Generator(device=dev).manual_seed(0)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float16  # the interpreter's bf16 is off
    w = ld.LoRAWeights(adapters, HIDDEN, OUTS, max_rank, dtype=dt, device=dev)
    used = []
    for s in range(adapters):
        r = ranks[s % len(ranks)]
        used.append(r)
        a = torch.randn(len(OUTS) * r, HIDDEN, generator=g, device=dev) / HIDDEN**0.5
        b = torch.randn(sum(OUTS), r, generator=g, device=dev) / r**0.5
        w.load(s, list(a.split(r)), list(b.split(list(OUTS))), 0.5)
    per = -(-t // adapters)
    lens = [min(per, t - i * per) for i in range(adapters) if t - i * per > 0]
    batch = ld.LoRABatch.from_segments(lens, list(range(len(lens))), device=dev)
    x = torch.randn(t, HIDDEN, generator=g, device=dev).to(dt)
    y = torch.randn(len(OUTS), t, max_rank, generator=g, device=dev)
    for i, n in enumerate(lens):  # y past each token's rank is zero (the shrink's contract)
        y[:, i * per:i * per + n, used[i]:] = 0
    out = torch.randn(t, sum(OUTS), generator=g, device=dev).to(dt)
    live = range(len(lens))
    abytes = sum(len(OUTS) * used[i] * HIDDEN * 2 for i in live)
    bbytes = sum(sum(OUTS) * used[i] * 2 for i in live)
    ybytes = sum(len(OUTS) * n * used[i] * 4 for i, n in enumerate(lens))
    rmw = 2 * out.numel() * 2
    nbytes = {"add_lora": x.numel() * 2 + abytes + bbytes + rmw,
              "qkv_expand": ybytes + bbytes + rmw}
    return w, batch, x, y, out, nbytes


def _kernels(w, t: int, x, out) -> str:
    """Which shrink and expand kernels eager ``add_lora`` launches, and its rank bound."""
    cap = L._cap(w, x)
    plan = L._pick(impl.plan_for("add", w, t, cap=cap), x, w)
    if plan.shrink is None:
        return "fused"
    g = plan.expand.gluon
    e = g is not None and L._gluon_expand_ok(g, out, w)
    return (f"shrink {'gluon' if L._desc_kind(plan.shrink, x, w) == 2 else 'triton'}, "
            f"expand {'gluon' if e else 'triton'}" + (f", planned for rank {cap}" if cap else ""))


def _shape(spec: str, dev: torch.device, copy: float | None, rows: list[dict], args) -> None:
    f = spec.split(":")
    t, ranks, adapters = int(f[0]), [int(r) for r in f[1].split("/")], int(f[2])
    max_rank = int(f[3]) if len(f) > 3 else max(ranks)
    w, batch, x, y, out, nbytes = _build(t, ranks, adapters, max_rank, dev)
    base = out.clone()
    takes, expand_gluon, cap = L._gluon_takes, C.expand_gluon, L._cap

    def use(variant: str) -> None:
        L._gluon_takes = {"triton": lambda *a: False, "gluon": lambda *a: True,
                          "gluon-shrink": lambda *a: True}.get(variant, takes)
        C.expand_gluon = (lambda *a, **k: None) if variant == "gluon-shrink" else expand_gluon
        L._cap = (lambda w, x: 0) if variant == "no-cap" else cap
        for memo in ("_triton_plans", "_gluon_a_desc", "_gluon_b_desc"):
            w.__dict__.pop(memo, None)

    variants = ["shipped", "triton", "gluon", "gluon-shrink"]
    if max(16, C.next_pow2(max(ranks))) < max_rank:
        variants.append("no-cap")

    calls = {"add_lora": lambda: impl.add_lora(out, x, w, batch),
             "qkv_expand": lambda: impl.expand(y, w, batch, out)}
    try:
        for op, fn in calls.items():
            want = base.float()  # [T, N]
            if op == "add_lora":
                ref_impl.add_lora(want, x, w, batch)
            else:
                ref_impl.expand(y, w, batch, want)
            delta = want.double() - base.double()  # [T, N]
            ok = []
            for variant in variants:
                if op == "qkv_expand" and variant not in ("shipped", "triton", "gluon", "no-cap"):
                    continue
                use(variant)
                out.copy_(base)
                try:
                    fn()
                except Exception as exc:  # a variant that cannot build is reported
                    print(f"{spec} {op} {variant} failed: {exc!r}"[:300], flush=True)
                    continue
                err = ((out.double() - base.double() - delta).norm() / delta.norm()).item()
                if not err < 1e-2:
                    print(f"{spec} {op} {variant}: wrong result (rel {err:.3g})", flush=True)
                    continue
                ok.append((variant, err, _kernels(w, t, x, out)))
            times: dict[str, list[float]] = {v: [] for v, _, _ in ok}
            for _ in range(args.rounds):
                for variant, _, _ in ok:
                    use(variant)
                    times[variant].append(gpu_time_us(fn, dev, warmup_ms=5, rep_ms=20))
            for variant, err, gl in ok:
                us = times[variant]
                med = sorted(us)[len(us) // 2]
                row = dict(shape=spec, op=op, variant=variant, us=round(med, 2),
                           rounds=[round(u, 2) for u in us], rel_err=float(f"{err:.3g}"),
                           kernels=gl, bytes=nbytes[op],
                           pct_copy=round(100 * nbytes[op] / med / 1e3 / copy, 1)
                           if copy else None)
                rows.append(row)
                print(row, flush=True)
    finally:
        L._gluon_takes, C.expand_gluon, L._cap = takes, expand_gluon, cap
        w.__dict__.pop("_triton_plans", None)


def main(argv: list[str] | None = None) -> int:
    return probe_main(argv, __doc__, SHAPES, _shape,
                      extra_args=lambda ap: ap.add_argument("--rounds", type=int, default=3))


if __name__ == "__main__":
    raise SystemExit(main())
