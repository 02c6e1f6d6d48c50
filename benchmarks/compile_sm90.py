"""Compile the Triton kernels for sm_90 without a GPU: registers per thread, and PTX to diff.

    python benchmarks/compile_sm90.py [--dump DIR]        # registers / spills per variant
    python benchmarks/compile_sm90.py --compare DIR_A DIR_B

Uses Triton's compiler with a ``GPUTarget("cuda", 90, 32)`` and the ``ptxas`` bundled with
Triton, so it runs on a CPU-only machine. ``--dump`` writes one ``.ptx`` per variant;
``--compare`` reports, per variant, how many instruction lines differ between two dumps
(debug info, comments, labels and data directives ignored), which checks that a refactor of
a kernel's helpers left its code unchanged.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_CODE_SKIP = re.compile(r"^\s*(//|\.file|\.loc|\.b8|\.b32|\.b64|\.section|\$L__|[{}]\s*$|$)")


def _ptxas() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")


def _compile(fn, types: dict, cx: dict, div: tuple, warps: int, stages: int) -> tuple[int, str]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(fn, "_fl_jit", fn)
    names = fn.arg_names
    sig = {n: "constexpr" if n in cx else types.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if types.get(n, "").startswith("*") or n in div}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in cx.items()},
                    attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps, num_stages=stages))
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    r = subprocess.run([_ptxas(), "-arch=sm_90a", "-v", f.name, "-o", os.devnull],
                       capture_output=True, text=True)
    os.unlink(f.name)
    m = re.search(r"Used (\d+) registers", r.stderr)
    return (int(m.group(1)) if m else -1), k.asm["ptx"]


def variants():
    """(name, kernel, types, constexprs, divisible args, warps, stages)."""
    from lora_dispatch.kernels.triton import launch as L

    p = dict(x_ptr="*bf16", a_ptr="*bf16", y_ptr="*fp32", ranks_ptr="*i32", scal_ptr="*fp32",
             tok_ptr="*i32", tiles_ptr="*i32")
    div = ("K", "K_SPLIT", "stride_xm", "stride_yp", "stride_ys", "stride_yt")
    for rb, bn, bk, atomic, even in ((1, 64, 64, False, True), (3, 16, 128, False, True),
                                     (1, 16, 128, True, False)):
        cx = dict(stride_xk=1, S=3, R=bn if bn == 64 else 16, TILE=2, BM=64, BN=bn, BK=bk,
                  RB=rb, EVEN_K=even, ATOMIC=atomic, PREC="ieee")
        tag = f"RB{rb}-BN{bn}-BK{bk}-A{int(atomic)}-E{int(even)}"
        yield f"shrink-{tag}", L.shrink_kernel, p, cx, div, 4, 4
        desc = dict(p, x_desc=f"tensordesc<bf16[64, {bk}]>", a_desc=f"tensordesc<bf16[{bn}, {bk}]>")
        yield f"shrink_tma-{tag}", L.shrink_tma_kernel, desc, cx, div, 4, 4
    e = dict(y_ptr="*fp32", b_ptr="*bf16", out_ptr="*bf16", ranks_ptr="*i32", bounds_ptr="*i32",
             tok_ptr="*i32", tiles_ptr="*i32")
    ediv = ("N", "stride_yp", "stride_ys", "stride_yt", "stride_om")
    for bm, bn, br, ncol, stages, r in ((64, 128, 64, 8, 1, 64), (32, 128, 16, 4, 1, 16),
                                        (16, 64, 16, 1, 1, 16), (32, 128, 16, 4, 3, 16)):
        cx = dict(stride_yr=1, stride_on=1, S=3, R=r, TILE=2, SPLIT=1, BM=bm, BN=bn, BR=br,
                  NCOL=ncol, ALIGN=16, PREC="ieee")
        name = f"expand-BM{bm}-BN{bn}-R{r}-NCOL{ncol}-ST{stages}"
        yield name, L.expand_kernel, e, cx, ediv, 4, stages


def _code(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not _CODE_SKIP.match(line)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", default=None, help="write one .ptx per variant here")
    ap.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"))
    args = ap.parse_args(argv)
    if args.compare:
        a, b = map(Path, args.compare)
        changed = 0
        for fa in sorted(a.glob("*.ptx")):
            fb = b / fa.name
            if not fb.exists():
                print(f"{fa.name}: missing in {b}")
                changed += 1
                continue
            la, lb = _code(fa), _code(fb)
            same = la == lb
            changed += not same
            print(f"{fa.name}: {'same' if same else 'DIFFERENT'} ({len(la)} / {len(lb)} lines)")
        return 1 if changed else 0
    os.environ.pop("TRITON_INTERPRET", None)
    out = Path(args.dump) if args.dump else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for name, fn, types, cx, div, warps, stages in variants():
        regs, ptx = _compile(fn, types, cx, div, warps, stages)
        print(f"{name:45s} {regs:4d} registers")
        if out:
            (out / f"{name}.ptx").write_text(ptx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
