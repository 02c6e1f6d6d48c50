"""Read-modify-write of ``out`` through a TMA ring: which box shapes stream fastest (GPU).

    python benchmarks/probe_tma_rmw.py [--json PATH] [--shapes 8192x6144,8192x28672]

The Gluon expand moves ``out`` as ``[64, 64]`` boxes (128 contiguous bytes a row, the
128-byte swizzle's limit). This times the same ring with no ``B``, ``y`` or dot (each
program: ``NCOL`` boxes along a row band, loads ``STAGES - 2`` ahead, ``out + 1`` stored
back by TMA from the ring buffer) over box shapes:

- ``2d BMxBN``: a ``[BM, BN]`` box (swizzled 128 B for ``BN = 64``, unswizzled above);
- ``3d BMxGx64``: ``out`` viewed as ``[T, N / 64, 64]`` and a ``[BM, G, 64]`` box, so each
  row's ``G * 128`` bytes are requested together while the shared layout keeps the 128-byte
  swizzle (what a wgmma accumulator reads without bank conflicts).

Beside them: ``out.add_(1)`` and the 1 GiB copy. Every variant's result must equal
``out + 1`` exactly. Cold L2, median of CUDA events; % of the copy bandwidth from the bytes
read and written.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from lora_dispatch.bench.timing import (
    copy_bandwidth_gbs,
    env_record,
    gpu_time_us,
    pct_of_copy,
    write_json,
)


@gluon.constexpr_function
def ring_layout(three, width, num_warps):
    """Registers' layout of one ring box: ``[BM, G, 64]`` (3-d) or ``[BM, width]``, 16-byte
    vectors along the contiguous columns."""
    if three:
        return gl.BlockedLayout([1, 1, 8], [4, 1, 8], [num_warps, 1, 1], [2, 1, 0])
    tn = min(width // 8, 32)
    return gl.BlockedLayout([1, 8], [32 // tn, tn], [num_warps, 1], [1, 0])


@gluon.jit
def issue_box(desc, bufs, ready, row, c, s, THREE: gl.constexpr):
    """TMA load of the box at row ``row``, column step ``c`` into ring stage ``s``."""
    mbarrier.expect(ready.index(s), desc.block_type.nbytes)
    if THREE:
        tma.async_copy_global_to_shared(desc, [row, c, 0], ready.index(s), bufs.index(s))
    else:
        tma.async_copy_global_to_shared(desc, [row, c], ready.index(s), bufs.index(s))


def box_descriptor(a: torch.Tensor, three: bool, bm: int, bn: int):
    """``(descriptor, columns a box)`` of a contiguous bf16 ``a [T, N]``: ``[bm, bn]`` boxes
    (128-byte swizzle at ``bn`` 64, unswizzled above), or with ``three`` ``[bm, bn, 64]``
    boxes of ``a`` viewed as ``[T, N / 64, 64]`` (swizzle kept, ``bn * 128`` contiguous bytes
    a row)."""
    t, n = a.shape
    if three:
        layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)
        return TensorDescriptor(a.view(t, n // 64, 64), [t, n // 64, 64], [n, 64, 1],
                                [bm, bn, 64], layout), bn * 64
    layout = (gl.NVMMASharedLayout.get_default_for([bm, bn], gl.bfloat16) if bn == 64 else
              gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2))
    return TensorDescriptor(a, [t, n], [n, 1], [bm, bn], layout), bn


def time_rounds(fns: dict, dev: torch.device, rounds: int = 2) -> dict:
    """Cold-L2 event medians (µs) of each callable, the variants alternating over
    ``rounds`` rounds; the last round's."""
    for _ in range(rounds):
        res = {name: gpu_time_us(fn, dev, warmup_ms=5, rep_ms=30) for name, fn in fns.items()}
    return res


@gluon.jit
def _ring_rmw(o_desc, NB, NCOL: gl.constexpr, STAGES: gl.constexpr, THREE: gl.constexpr,
              num_warps: gl.constexpr):
    BM: gl.constexpr = o_desc.block_type.shape[0]
    AHEAD: gl.constexpr = STAGES - 2
    STEP: gl.constexpr = o_desc.block_type.shape[1]  # G (3-d) or BN
    LY: gl.constexpr = ring_layout(THREE, STEP, num_warps)
    if THREE:
        shape: gl.constexpr = [STAGES, BM, STEP, 64]
    else:
        shape: gl.constexpr = [STAGES, BM, STEP]
    pid = gl.program_id(0)
    row = (pid // NB) * BM
    c0 = (pid % NB) * STEP * NCOL
    bufs = gl.allocate_shared_memory(o_desc.dtype, shape, o_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
    fence_async_shared()
    for i in gl.static_range(AHEAD):
        issue_box(o_desc, bufs, ready, row, c0 + i * STEP, i, THREE)
    for j in range(NCOL):
        if j + AHEAD < NCOL:
            tma.store_wait(1)
        gl.thread_barrier()
        if j + AHEAD < NCOL:
            issue_box(o_desc, bufs, ready, row, c0 + (j + AHEAD) * STEP, (j + AHEAD) % STAGES,
                      THREE)
        s = j % STAGES
        mbarrier.wait(ready.index(s), (j // STAGES) & 1)
        buf = bufs.index(s)
        v = buf.load(LY)
        gl.thread_barrier()
        buf.store(v + 1.0)
        fence_async_shared()
        gl.thread_barrier()
        if THREE:
            tma.async_copy_shared_to_global(o_desc, [row, c0 + j * STEP, 0], buf)
        else:
            tma.async_copy_shared_to_global(o_desc, [row, c0 + j * STEP], buf)
    tma.store_wait(0)


# name: (3-d, BM, BN or G, NCOL, STAGES); every program covers 1024 columns
VARIANTS = {
    "2d 64x64 st5 (the expand's)": (False, 64, 64, 16, 5),
    "2d 64x64 st4": (False, 64, 64, 16, 4),
    "2d 128x64 st4": (False, 128, 64, 16, 4),
    "2d 32x64 st6": (False, 32, 64, 16, 6),
    "2d 64x128 st4 (no swizzle)": (False, 64, 128, 8, 4),
    "2d 32x256 st4 (no swizzle)": (False, 32, 256, 4, 4),
    "3d 64x2x64 st4": (True, 64, 2, 8, 4),
    "3d 64x2x64 st5": (True, 64, 2, 8, 5),
    "3d 32x4x64 st4": (True, 32, 4, 4, 4),
    "3d 64x4x64 st3": (True, 64, 4, 4, 3),
}


def _launch(out: torch.Tensor, three: bool, bm: int, bn: int, ncol: int, stages: int):
    desc, span = box_descriptor(out, three, bm, bn)
    nb = out.shape[1] // (span * ncol)
    grid = ((out.shape[0] // bm) * nb,)
    return lambda: _ring_rmw[grid](desc, nb, ncol, stages, three, num_warps=4)


def ring_rmws(out: torch.Tensor, base: torch.Tensor) -> dict:
    """``{name: fn}`` of every :data:`VARIANTS` ring adding 1 to ``out [T, N]`` (bf16) in
    place whose result, from ``base``, equals ``base + 1`` exactly; a wrong result or a box
    the TMA or the compiler refuses is printed and left out."""
    want = base + 1.0
    fns = {}
    for name, v in VARIANTS.items():
        try:
            fn = _launch(out, *v)
            out.copy_(base)
            fn()
            torch.cuda.synchronize()
        except Exception as exc:  # a box the TMA or the compiler refuses is reported
            print(f"{tuple(out.shape)} {name} failed: {exc!r}"[:300], flush=True)
            continue
        if not torch.equal(out, want):
            print(f"{tuple(out.shape)} {name}: wrong result", flush=True)
            continue
        fns[name] = fn
    return fns


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default="8192x6144,8192x28672")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    print(f"copy bandwidth (1 GiB) {copy:.0f} GB/s", flush=True)
    rows = []
    for spec in args.shapes.split(","):
        t, n = (int(v) for v in spec.split("x"))
        base = torch.randn(t, n, device=dev).to(torch.bfloat16)
        out = base.clone()
        nbytes = 2 * out.numel() * out.element_size()
        fns = {"torch add_": lambda o=out: o.add_(1.0), **ring_rmws(out, base)}
        for name, us in time_rounds(fns, dev).items():
            row = dict(shape=spec, variant=name, us=round(us, 2),
                       pct_copy=round(pct_of_copy(nbytes, us, copy), 1))
            rows.append(row)
            print(row, flush=True)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
