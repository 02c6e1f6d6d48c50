"""Read-only stream of ``x`` through a TMA ring: which box shapes read fastest (GPU).

    python benchmarks/probe_tma_read.py [--json PATH] [--shapes 8192x4096,2048x4096]

The prefill shrink reads ``x [T, K]`` once and writes almost nothing. Its Gluon kernel moves
``x`` as ``[BM, 64]`` boxes (128 contiguous bytes a row, the 128-byte swizzle's limit), and
the read-modify-write probe (``probe_tma_rmw.py``) found such boxes 7-9 points of the copy
bandwidth slower than ``[BM, G, 64]`` boxes of a ``[T, K / 64, 64]`` view. This times the
same question for reads alone: a program owns ``BM`` rows and one of ``SPLIT`` spans of
``K``, and walks it in boxes through a ring of ``STAGES`` buffers (``STAGES - 1`` loads in
flight). Consumers:

- ``wait``: nothing but the barrier wait (the TMA engine's rate);
- ``sum``: every box read from shared memory into registers and summed (what a wgmma with a
  register ``A`` operand would pay for a 3-D box it cannot read from shared memory);
- ``mma``: one wgmma per ``[BM, 64]`` chunk from shared memory against a ones ``[64, 64]``
  operand (the shrink's work per chunk), for the boxes wgmma can read: 2-D ``[BM, 64]`` and
  ``perm``.

``perm`` boxes read a ``[K / 64, T, 64]`` view of ``x`` (strides ``64, K, 1``: the chunk
dimension outermost) in ``[G, BM, 64]`` boxes: the same ``G * 128`` contiguous bytes a row as
the 3-D ``[BM, G, 64]`` boxes, but landing in shared memory as ``G`` ordinary swizzled
``[BM, 64]`` tiles, which wgmma reads as they are.

Beside them: ``x.sum(1)``, cuBLAS ``x @ A^T`` (N = 64 and 192) and ``x.clone()`` (read and
write). Each program's sum is checked against ``x``'s. Cold L2, median of CUDA events; % of
the copy bandwidth (1 GiB, same run) from the bytes of ``x``. The ring's boxes, layouts and
rounds are ``probe_tma_rmw.py``'s (imported from this directory).
"""

from __future__ import annotations

import torch
from probe_tma_rmw import box_descriptor, issue_box, ring_layout, time_rounds
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, pct_of_copy, write_json


@gluon.jit
def _issue(desc, bufs, ready, row, c, s, KIND: gl.constexpr):
    if KIND == 2:  # perm: [G, BM, 64] boxes at (chunk, row)
        mbarrier.expect(ready.index(s), desc.block_type.nbytes)
        tma.async_copy_global_to_shared(desc, [c, row, 0], ready.index(s), bufs.index(s))
    else:
        issue_box(desc, bufs, ready, row, c, s, KIND == 1)


@gluon.jit
def _ring_read(desc, out_ptr, NSPLIT, KSTEPS: gl.constexpr, STAGES: gl.constexpr,
               KIND: gl.constexpr, CONSUME: gl.constexpr, num_warps: gl.constexpr):
    # KIND 0: [BM, BN] boxes, 1: [BM, G, 64], 2: perm [G, BM, 64]; CONSUME 0 wait, 1 sum, 2 mma
    if KIND == 2:
        BM: gl.constexpr = desc.block_type.shape[1]
        STEP: gl.constexpr = desc.block_type.shape[0]  # G chunks of 64
        shape: gl.constexpr = [STAGES, STEP, BM, 64]
    else:
        BM: gl.constexpr = desc.block_type.shape[0]
        STEP: gl.constexpr = desc.block_type.shape[1]  # G (3-d) or BN
        if KIND == 1:
            shape: gl.constexpr = [STAGES, BM, STEP, 64]
        else:
            shape: gl.constexpr = [STAGES, BM, STEP]
    AHEAD: gl.constexpr = STAGES - 1
    NCH: gl.constexpr = STEP if KIND > 0 else 1  # [BM, 64] chunks a box (mma)
    LY: gl.constexpr = ring_layout(KIND > 0, STEP, num_warps)
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, 64, 16])
    if KIND > 0:
        acc = gl.zeros([BM, STEP, 64], gl.float32, LY)
    else:
        acc = gl.zeros([BM, STEP], gl.float32, LY)
    macc = gl.zeros([BM, 64], gl.float32, MMA)
    pid = gl.program_id(0)
    row = (pid // NSPLIT) * BM
    c0 = (pid % NSPLIT) * KSTEPS * STEP
    bufs = gl.allocate_shared_memory(desc.dtype, shape, desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    CH: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, 64], gl.bfloat16)
    chunks = bufs._reinterpret(desc.dtype, [STAGES * NCH, BM, 64], CH)
    ones = gl.allocate_shared_memory(
        gl.bfloat16, [64, 64], gl.NVMMASharedLayout.get_default_for([64, 64], gl.bfloat16),
        gl.full([64, 64], 1.0, gl.bfloat16, gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1],
                                                             [1, 0])))
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
    fence_async_shared()
    for i in gl.static_range(AHEAD):
        if i < KSTEPS:
            _issue(desc, bufs, ready, row, c0 + i * STEP, i, KIND)
    for j in range(KSTEPS):
        gl.thread_barrier()
        if j + AHEAD < KSTEPS:
            _issue(desc, bufs, ready, row, c0 + (j + AHEAD) * STEP, (j + AHEAD) % STAGES,
                   KIND)
        s = j % STAGES
        mbarrier.wait(ready.index(s), (j // STAGES) & 1)
        if CONSUME == 1:
            if KIND == 2:
                acc += bufs.index(s).permute((1, 0, 2)).load(LY).to(gl.float32)
            else:
                acc += bufs.index(s).load(LY).to(gl.float32)
        elif CONSUME == 2:
            for g in gl.static_range(NCH):
                macc = warpgroup_mma(chunks.index(s * NCH + g), ones, macc)
    if CONSUME == 2:
        total = gl.sum(gl.sum(macc, axis=1), axis=0) / 64.0
    elif KIND > 0:
        total = gl.sum(gl.sum(gl.sum(acc, axis=2), axis=1), axis=0)
    else:
        total = gl.sum(gl.sum(acc, axis=1), axis=0)
    gl.store(out_ptr + pid, total)


# name: (kind: 0 2-d, 1 3-d, 2 perm; BM, BN or G, STAGES, SPLIT); the Gluon shrink runs
# 64 x 64 boxes, 6 stages, one program a unit
VARIANTS = {
    "2d 64x64 st6 split1 (the shrink's)": (0, 64, 64, 6, 1),
    "2d 64x64 st6 split2": (0, 64, 64, 6, 2),
    "2d 64x64 st12 split1": (0, 64, 64, 12, 1),
    "2d 128x64 st6 split1": (0, 128, 64, 6, 1),
    "2d 128x64 st6 split2": (0, 128, 64, 6, 2),
    "3d 64x2x64 st6 split1": (1, 64, 2, 6, 1),
    "3d 64x2x64 st6 split2": (1, 64, 2, 6, 2),
    "3d 64x2x64 st4 split2": (1, 64, 2, 4, 2),
    "3d 64x4x64 st4 split1": (1, 64, 4, 4, 1),
    "3d 64x4x64 st3 split2": (1, 64, 4, 3, 2),
    "3d 128x2x64 st4 split1": (1, 128, 2, 4, 1),
    "3d 128x2x64 st4 split2": (1, 128, 2, 4, 2),
    "perm 2x64x64 st6 split1": (2, 64, 2, 6, 1),
    "perm 2x64x64 st4 split1": (2, 64, 2, 4, 1),
    "perm 2x64x64 st4 split2": (2, 64, 2, 4, 2),
    "perm 4x64x64 st3 split1": (2, 64, 4, 3, 1),
    "perm 4x64x64 st3 split2": (2, 64, 4, 3, 2),
}


def perm_descriptor(a: torch.Tensor, bm: int, g: int):
    """``(descriptor, columns a box)`` of a contiguous bf16 ``a [T, N]`` viewed as
    ``[N / 64, T, 64]`` (strides ``64, N, 1``), ``[g, bm, 64]`` boxes, 128-byte swizzle."""
    t, n = a.shape
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)
    return TensorDescriptor(a, [n // 64, t, 64], [64, n, 1], [g, bm, 64], layout), g * 64


def _launch(x: torch.Tensor, out: torch.Tensor, kind: int, bm: int, bn: int, stages: int,
            split: int, consume: int):
    if kind == 2:
        desc, span = perm_descriptor(x, bm, bn)
    else:
        desc, span = box_descriptor(x, kind == 1, bm, bn)
    steps = x.shape[1] // (span * split)
    grid = ((x.shape[0] // bm) * split,)
    return grid[0], lambda: _ring_read[grid](desc, out, split, steps, stages, kind, consume,
                                             num_warps=4)


def ring_reads(x: torch.Tensor, out: torch.Tensor, consumes: tuple[int, ...] = (0, 1, 2)):
    """``(label, programs, consume, fn)`` of every :data:`VARIANTS` ring over ``x [T, K]``
    (bf16) that compiles, with each of ``consumes`` it supports (0 wait, 1 sum, 2 mma; the
    per-program sums go to ``out``). Shorter batches split ``K`` further, as the shrink does
    (``8192 // T`` times; their labels say so). Each has run once, ``out`` poisoned with NaN
    before, so ``out[:programs]`` holds its sums; a box the TMA or the compiler refuses is
    printed and skipped."""
    t, k = x.shape
    scale = max(1, 8192 // t)
    for name, (kind, bm, bn, stages, split) in VARIANTS.items():
        split *= scale
        if k // ((64 * bn if kind else bn) * split) < 1:
            continue
        mma_ok = kind == 2 or (kind == 0 and bn == 64)
        for consume in consumes:
            if consume == 2 and not mma_ok:
                continue
            label = f"{name} {('wait', 'sum', 'mma')[consume]}"
            if scale > 1:
                label = label.replace("split", f"x{scale} split")
            try:
                nprog, fn = _launch(x, out, kind, bm, bn, stages, split, consume)
                out.fill_(float("nan"))
                fn()
                torch.cuda.synchronize()
            except Exception as exc:  # a box the TMA or the compiler refuses is reported
                print(f"{t}x{k} {label} failed: {exc!r}"[:300], flush=True)
                continue
            yield label, nprog, consume, fn


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default="8192x4096,2048x4096")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    copy = copy_bandwidth_gbs(dev)
    print(f"copy bandwidth (1 GiB) {copy:.0f} GB/s", flush=True)
    rows = []
    for spec in args.shapes.split(","):
        t, k = (int(v) for v in spec.split("x"))
        x = torch.randn(t, k, device=dev).to(torch.bfloat16)
        want = x.float().sum()
        out = torch.empty(4 * t, device=dev, dtype=torch.float32)
        a64 = torch.randn(64, k, device=dev, dtype=torch.bfloat16)
        a192 = torch.randn(192, k, device=dev, dtype=torch.bfloat16)
        nbytes = x.numel() * x.element_size()
        fns = {"x.sum(1)": (1, lambda x=x: x.sum(1)),
               "cublas x@A^T N=64": (1, lambda x=x, a=a64: x @ a.t()),
               "cublas x@A^T N=192": (1, lambda x=x, a=a192: x @ a.t()),
               "x.clone() (read + write)": (2, lambda x=x: x.clone())}
        for label, nprog, consume, fn in ring_reads(x, out):
            if consume:
                got = out[:nprog].double().sum().item()
                if abs(got - want.item()) > 1e-3 * x.numel() ** 0.5 + 1e-3 * abs(want.item()):
                    print(f"{spec} {label}: wrong sum {got} vs {want.item()}", flush=True)
                    continue
            fns[label] = (1, fn)
        res = time_rounds({name: fn for name, (_, fn) in fns.items()}, dev)
        for name, us in res.items():
            mult = fns[name][0]
            row = dict(shape=spec, variant=name, us=round(us, 2),
                       pct_copy=round(pct_of_copy(mult * nbytes, us, copy), 1))
            rows.append(row)
            print(row, flush=True)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
