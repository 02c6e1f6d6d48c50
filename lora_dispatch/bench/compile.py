"""Compile the Triton kernels for an H100/H200 (sm_90) or an MI300 (gfx942) without a GPU.

    python benchmarks/compile_offline.py [--target sm90|gfx942] [--dump DIR] [--json PATH]
    python benchmarks/compile_offline.py --compare DIR_A DIR_B

(``tests/test_compile_targets.py`` builds every variant for both targets in CPU CI.)

Each variant is a kernel with the constexprs, warps and stages that the device family's
configs (:mod:`lora_dispatch.devices.configs`) choose for a typical shape (qkv 4096 ->
4096+1024+1024, gate_up 14336+14336, bf16, decode and prefill ``T``), built through the
launch plans. Triton's compiler targets ``GPUTarget("cuda", 90, 32)`` with its bundled
``ptxas`` (registers per thread), or ``GPUTarget("hip", "gfx942", 64)`` with its built-in
AMDGPU backend and linker (VGPRs, AGPRs, SGPRs, spills, scratch bytes), so it runs on a
CPU-only machine. ``--dump`` writes one ``.ptx`` / ``.amdgcn`` per variant; ``--compare``
reports, per variant, whether the instruction lines of two dumps differ (debug info,
comments, labels and data directives ignored): a check that a refactor of a kernel's
helpers left its code unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_CODE_SKIP = re.compile(r"^\s*(//|;|\.file|\.loc|\.b8|\.b32|\.b64|\.byte|\.short|\.long|\.quad"
                        r"|\.section|\$L__|\.L|[{}]\s*$|$)")
_AMD_KEYS = ("vgpr_count", "agpr_count", "sgpr_count", "vgpr_spill_count", "sgpr_spill_count",
             "private_segment_fixed_size")


def _ptxas() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")


def compiled_kernel(target: str, fn, types: dict, meta: dict, div: tuple):
    """Triton's CompiledKernel of one variant for ``target`` (``sm90`` / ``gfx942``),
    built without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(fn, "_fl_jit", fn)
    names = fn.arg_names
    cx = {k: v for k, v in meta.items() if k in names}
    sig = {n: "constexpr" if n in cx else types.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if types.get(n, "").startswith("*") or n in div}
    if type(fn).__name__ == "GluonJITFunction":
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in cx.items()},
                    attrs=attrs)
    gpu = GPUTarget("cuda", 90, 32) if target == "sm90" else GPUTarget("hip", "gfx942", 64)
    return triton.compile(src, target=gpu, options=dict(num_warps=meta["num_warps"],
                                                        num_stages=meta["num_stages"]))


def _compile(target: str, fn, types: dict, meta: dict, div: tuple) -> tuple[dict, str]:
    k = compiled_kernel(target, fn, types, meta, div)
    if target != "sm90":
        asm = k.asm["amdgcn"]
        stats = {}
        for key in _AMD_KEYS:
            m = re.search(rf"\.{key}:\s+(\d+)", asm)
            stats[key] = int(m.group(1)) if m else None
        return stats, asm
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    r = subprocess.run([_ptxas(), "-arch=sm_90a", "-v", f.name, "-o", os.devnull],
                       capture_output=True, text=True)
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spill = re.search(r"(\d+) bytes spill stores", r.stderr)
    return ({"registers": int(regs.group(1)) if regs else None,
             "spill_store_bytes": int(spill.group(1)) if spill else None}, k.asm["ptx"])


__all__ = ["variants", "compile_variant", "compiled_kernel", "main"]


def compile_variant(target: str, fn, types: dict, meta: dict, div: tuple) -> tuple[dict, str]:
    """Compile one variant for ``target`` (``sm90`` / ``gfx942``): (statistics, assembly)."""
    return _compile(target, fn, types, meta, div)


def _expand_meta(ep) -> dict:
    """An expand plan's constexprs, with ``y``'s rank stride and ``out``'s column stride 1."""
    return {**ep.meta, "stride_yr": 1, "stride_on": 1}


def variants(target: str):
    """(name, kernel, argument types, constexprs + warps / stages, divisible int args)."""
    import torch

    import lora_dispatch as ld
    from lora_dispatch.devices import configs
    from lora_dispatch.devices.info import DeviceInfo
    from lora_dispatch.kernels.triton import launch as L

    if target == "sm90":
        info = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA H100 80GB HBM3", "sm_90",
                          132, 32, (9, 0))
    else:
        info = DeviceInfo("rocm", torch.device("cuda", 0), "AMD Instinct MI300X", "gfx942",
                          304, 64)
    st = dict(x_ptr="*bf16", a_ptr="*bf16", y_ptr="*fp32", ranks_ptr="*i32",
              scal_ptr="*fp32", tok_ptr="*i32", tiles_ptr="*i32")
    sdiv = ("K", "K_SPLIT", "stride_xm", "stride_yp", "stride_ys", "stride_yt")
    et = dict(y_ptr="*fp32", b_ptr="*bf16", out_ptr="*bf16", ranks_ptr="*i32",
              bounds_ptr="*i32", tok_ptr="*i32", tiles_ptr="*i32")
    ediv = ("N", "stride_yp", "stride_ys", "stride_yt", "stride_om")
    for outs, name in (((4096, 1024, 1024), "qkv"), ((14336, 14336), "gate_up")):
        for rank in (16, 32, 64, 128):
            w = ld.LoRAWeights(4, 4096, outs, rank, dtype=torch.bfloat16)
            for t in {16: (16, 2048, 8192), 64: (16, 2048, 8192), 32: (64, 1024, 8192),
                      128: (64, 256, 1024, 8192)}[rank]:
                s, n = w.num_slices, w.total_out
                if name == "qkv":
                    cfg = configs.shrink_config(info, t, 4096, rank, 2, False, slices=s)
                    sp = L._shrink_plan(w, t, atomic=False, cfg=cfg)
                    meta = {**sp.meta, "stride_xk": 1}
                    yield f"shrink-{name}-r{rank}-T{t}", L.shrink_kernel, st, meta, sdiv
                    if target == "sm90" and t > 256:
                        bm, bn, bk = meta["BM"], meta["BN"], meta["BK"]
                        tt = dict(st, x_desc=f"tensordesc<bf16[{bm}, {bk}]>",
                                  a_desc=f"tensordesc<bf16[{bn}, {bk}]>")
                        yield f"shrink_tma-{name}-r{rank}-T{t}", L.shrink_tma_kernel, tt, meta, sdiv
                    split = sp.split
                else:
                    split = 1
                ecfg = configs.expand_config(info, t, n, rank, 2, widths=outs, partials=split)
                ep = L._expand_plan(w, t, split, cfg=ecfg)
                meta = _expand_meta(ep)
                yield f"expand-{name}-r{rank}-T{t}", L.expand_kernel, et, meta, ediv
                if name == "qkv" and rank in (16, 64) and t >= 2048:  # add_lora overlapped
                    op = L._overlap_plan(w, t, configs.overlap_config(
                        info, t, 4096, n, rank, 2, s)).overlap
                    yield (f"overlap-{name}-r{rank}-T{t}", L.overlap_kernel,
                           {**st, **et, "sync_ptr": "*i32"},
                           {**op.meta, "stride_xk": 1, "stride_on": 1}, sdiv + ediv)
                if target == "sm90" and name == "qkv" and rank == 16:  # add_lora's PDL pair
                    yield (f"shrink-pdl-{name}-r{rank}-T{t}", L.shrink_kernel, st,
                           {**sp.meta, "stride_xk": 1, "PDL": 1 if t <= 256 else 2}, sdiv)
                    yield (f"expand-pdl-{name}-r{rank}-T{t}", L.expand_kernel, et,
                           {**meta, "PDL": True}, ediv)
    for outs, name in (((4096, 1024, 1024), "qkv"), ((14336, 14336), "gate_up")):
        for rank in (16, 64):  # the public decode expand (one product): 128 / 256 columns
            w = ld.LoRAWeights(4, 4096, outs, rank, dtype=torch.bfloat16)
            for t in (64, 256):
                ecfg = configs.expand_config(info, t, w.total_out, rank, 2, widths=outs)
                ep = L._expand_plan(w, t, 1, cfg=ecfg)
                yield (f"expand-public-{name}-r{rank}-T{t}", L.expand_kernel, et,
                       _expand_meta(ep), ediv)
    w = ld.LoRAWeights(4, 4096, (4096, 1024, 1024), 64, dtype=torch.bfloat16)
    for t in (16, 2048):  # eager add_lora over rank-16 adapters in a rank-64 pool
        sp = L._shrink_plan(w, t, atomic=False, info=info, cap=16)
        yield f"shrink-qkv-r64cap16-T{t}", L.shrink_kernel, st, {**sp.meta, "stride_xk": 1}, sdiv
        ep = L._expand_plan(w, t, sp.split, info=info, cap=16)
        yield f"expand-qkv-r64cap16-T{t}", L.expand_kernel, et, _expand_meta(ep), ediv
    if target == "sm90":
        yield from _gluon_variants(info, st, sdiv)
        yield from _gluon_expand_variants(info, et, ediv)
    w = ld.LoRAWeights(4, 4096, (4096,), 16, dtype=torch.bfloat16)
    cfg = configs.shrink_config(info, 64, 4096, 16, 2, True, slices=1)
    meta = {**L._shrink_plan(w, 64, atomic=True, cfg=cfg).meta, "stride_xk": 1}
    yield "shrink-public-r16-T64", L.shrink_kernel, st, meta, sdiv
    tst = dict(st, slots_ptr="*i32", tick_ptr="*i32")
    tdiv = ("K", "K_SPLIT", "stride_xm", "stride_ys", "stride_yt")
    for outs, rank, t in (((4096,), 16, 64), ((4096, 1024, 1024), 16, 1),
                          ((4096, 1024, 1024), 64, 16)):  # the public decode shrink, one launch
        w = ld.LoRAWeights(4, 4096, outs, rank, dtype=torch.bfloat16)
        cfg = configs.shrink_config(info, t, 4096, rank, 2, True, slices=len(outs))
        tp = L.ticket_plan(L._shrink_plan(w, t, atomic=True, cfg=cfg, info=info), t)
        meta = {**dict(zip(L._TICKET_CX, tp.cx)), "num_warps": tp.num_warps,
                "num_stages": tp.num_stages, "stride_xk": 1}
        yield (f"shrink-ticket-s{len(outs)}-r{rank}-T{t}", L.shrink_ticket_kernel, tst, meta,
               tdiv)
    yield ("zero_fill", L.zero_kernel, {"y_ptr": "*fp32"},
           {"BLOCK": L.ZERO_BLOCK, "num_warps": 4, "num_stages": 1}, ("N",))


def _gluon_variants(info, st: dict, sdiv: tuple):
    """The Gluon shrink with the configs Hopper picks (where this Triton release runs it):
    qkv rank 16 / 24 / 64, gate_up and one slice at rank 64 / 128, the public shrink's
    zero-writing (one split) and atomic (split-K) epilogues, the programmatic-launch trigger
    of ``add_lora`` (qkv r64 T=8192), the public shrink's two-chunk boxes on full waves."""
    import torch

    import lora_dispatch as ld
    from lora_dispatch.devices import configs
    from lora_dispatch.kernels.triton import launch as L
    from lora_dispatch.kernels.triton.shrink_gluon_kernel import gluon_descriptors

    if configs._gluon_unfit(info, 4096, 3, 64, 2, L.GLUON_AVAILABLE) is not None:
        return
    from triton.runtime.jit import mangle_type

    for outs, rank, t, atomic, split in (((4096, 1024, 1024), 64, 8192, None, None),
                                         ((4096, 1024, 1024), 64, 2048, False, None),
                                         ((4096, 1024, 1024), 16, 8192, False, None),
                                         ((4096, 1024, 1024), 24, 4096, False, None),
                                         ((14336, 14336), 64, 8192, False, None),
                                         ((4096,), 128, 2048, False, None),
                                         ((4096,), 64, 4096, True, None),
                                         ((4096, 1024, 1024), 16, 2048, True, None),
                                         ((4096,), 16, 2048, True, 1),
                                         ((4096,), 64, 8192, True, None),
                                         ((4096, 1024, 1024), 16, 6144, True, None)):
        w = ld.LoRAWeights(4, 4096, outs, rank, dtype=torch.bfloat16)
        g = L._shrink_plan(w, t, atomic=bool(atomic), split_k=split,
                           pdl=2 if atomic is None else 0, info=info).alt.gluon
        c = g.cfg
        x = torch.empty(t, 4096, dtype=torch.bfloat16)
        xd, ad = gluon_descriptors(x, w.lora_a.view(-1, 4096), c.block_m, c.block_k,
                                   c.block_r, c.chunks)
        meta = dict(zip(("S", "R", "TILE", "STAGES", "ATOMIC", "FILL", "GATHER", "PDL"), g.cx),
                    num_warps=c.num_warps, num_stages=1)
        kind = "fill" if meta["FILL"] else "atomic" if meta["ATOMIC"] else "ws"
        name = f"shrink_gluon-{kind}-s{w.num_slices}-r{rank}-T{t}"
        if c.chunks > 1:
            name += f"-chunks{c.chunks}"
        yield (name, L.shrink_gluon_kernel,
               {**st, "x_desc": mangle_type(xd), "a_desc": mangle_type(ad)}, meta, sdiv)


def _gluon_expand_variants(info, et: dict, ediv: tuple):
    """The Gluon expand where Hopper picks it (qkv and gate_up rank 64 prefill, ``add_lora``'s
    programmatic launch and one split, the public expand; gate_up forced, as the H100 target
    here keeps the Triton expand on gate_up widths and the H200 takes Gluon), and forced at
    rank 16 and 128 (where this Triton release runs it)."""
    import torch

    import lora_dispatch as ld
    from lora_dispatch.devices import configs
    from lora_dispatch.kernels.triton import launch as L
    from lora_dispatch.kernels.triton.expand_gluon_kernel import b_descriptor, out_descriptor

    if configs._gluon_expand_unfit(info, (4096,), 64, 2, 64, L.GLUON_AVAILABLE) is not None:
        return
    from triton.runtime.jit import mangle_type

    pick = configs.expand_gluon
    # two 64-column B boxes a 128-column block (b_block; sweeps only, not picked by a family)
    sub = configs.GluonExpandConfig(64, 128, 8, 3, 4, 3, 64)
    for outs, rank, t, pdl, forced, cfg in (
            ((4096, 1024, 1024), 64, 8192, True, False, None),
            ((14336, 14336), 64, 4096, False, True, None),  # H200's
            ((4096, 1024, 1024), 16, 8192, False, True, None),
            ((4096, 1024, 1024), 128, 8192, True, True, None),
            ((4096, 1024, 1024), 64, 8192, True, True, sub)):
        w = ld.LoRAWeights(4, 4096, outs, rank, dtype=torch.bfloat16)
        os.environ[configs.ENV_GLUON_EXPAND] = "1" if forced else "auto"
        if cfg is not None:
            configs.expand_gluon = lambda *a, _c=cfg, **k: _c
        try:
            g = L._expand_plan(w, t, 1, pdl=pdl, info=info)
        finally:
            del os.environ[configs.ENV_GLUON_EXPAND]
            configs.expand_gluon = pick
        g = g.gluon
        c = g.cfg
        out = torch.empty(t, w.total_out, dtype=torch.bfloat16)
        od = out_descriptor(out, t, w.total_out, w.total_out, g.tile)
        bd = b_descriptor(w.lora_b, c.b_block or c.block_n)
        meta = dict(zip(("S", "TILE", "SPLIT", "NCOL", "STAGES", "BSTAGES", "ALIGN", "PDL"),
                        g.cx),
                    num_warps=c.num_warps, num_stages=1)
        types = {k: v for k, v in et.items() if k != "b_ptr"}
        name = (f"expand_gluon-s{w.num_slices}-r{rank}-T{t}{'-pdl' if pdl else ''}"
                + (f"-bn{c.block_n}-bb{c.b_block}" if c.b_block else ""))
        yield (name, L.expand_gluon_kernel,
               {**types, "o_desc": mangle_type(od), "b_desc": mangle_type(bd)}, meta, ediv)


def _code(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not _CODE_SKIP.match(line)]


def _compare(a: Path, b: Path) -> int:
    changed = 0
    for fa in sorted(p for p in a.iterdir() if p.suffix in (".ptx", ".amdgcn")):
        fb = b / fa.name
        if not fb.exists():
            print(f"{fa.name}: missing in {b}")
            changed += 1
            continue
        la, lb = _code(fa), _code(fb)
        changed += la != lb
        print(f"{fa.name}: {'same' if la == lb else 'DIFFERENT'} ({len(la)} / {len(lb)} lines)")
    return 1 if changed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="sm90", choices=("sm90", "gfx942"))
    ap.add_argument("--dump", default=None, help="write one .ptx / .amdgcn per variant here")
    ap.add_argument("--json", default=None, help="write the per-variant statistics here")
    ap.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"))
    args = ap.parse_args(argv)
    if args.compare:
        return _compare(*map(Path, args.compare))
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: the interpreter does not compile")
    out = Path(args.dump) if args.dump else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], 0
    for name, fn, types, meta, div in variants(args.target):
        cx = {k: v for k, v in meta.items() if k not in ("num_warps", "num_stages")}
        try:
            stats, asm = _compile(args.target, fn, types, meta, div)
        except Exception as exc:  # a variant the target cannot build is reported, not fatal
            failed += 1
            print(f"{name:34s} FAILED {exc!r}"[:240])
            rows.append({"variant": name, "error": repr(exc)[:300]})
            continue
        rows.append({"variant": name, "num_warps": meta["num_warps"],
                     "num_stages": meta["num_stages"], **stats,
                     "constexprs": {k: v for k, v in cx.items() if k.isupper()}})
        print(f"{name:34s} warps {meta['num_warps']} stages {meta['num_stages']}  "
              + "  ".join(f"{k} {v}" for k, v in stats.items()))
        if out:
            (out / f"{name}.{'ptx' if args.target == 'sm90' else 'amdgcn'}").write_text(asm)
    if args.json:
        import datetime

        import triton

        from .timing import _git_commit

        Path(args.json).write_text(json.dumps(
            {"target": args.target, "triton": triton.__version__, "commit": _git_commit(),
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "rows": rows}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
