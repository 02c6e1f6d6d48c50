"""Probe: a warp-specialized Gluon shrink for the qkv rank-64 prefill GEMM (Hopper).

    python benchmarks/probe_shrink_gluon.py [--json PATH] [--tokens 8192] [--n 192,48,64]
    python benchmarks/probe_shrink_gluon.py --compile-only      # offline sm_90, no GPU

``x [T, 4096] @ A^T`` with ``A [192, 4096]`` (bf16, float32 out), the product the shrink of
``add_lora`` computes per slot for qkv at rank 64. cuBLAS runs it in ~24 us on the H200, the
shipped segmented shrink in ~32 us, Triton's TMA kernels in 29-35 us, and Triton 3.6's automatic
warp specialization at half speed (``probe_shrink_ws.py``). This kernel specializes by hand:
one producer warp issues the TMA loads of a ``[BM, BK]`` ``x`` tile and the ``NB`` ``[64, BK]``
blocks of ``A`` into a ring of ``STAGES`` shared-memory buffers (``ready`` / ``empty``
mbarriers); the consumer warpgroup(s) run one asynchronous wgmma per block, keep one stage in
flight and release the stage before it (the shipped kernel's consumer loop, ``_consume_tma``
of ``shrink_gluon_kernel.py``, which grew out of this probe). Every program holds all
``NB * 64`` rank rows, so each ``x`` tile leaves L2 once; ``SPLIT`` K splits write separate
partial products (as the workspace of ``add_lora``). Each config is checked against cuBLAS
before it is timed.
"""

from __future__ import annotations

import argparse
import itertools

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

from lora_dispatch.kernels.triton.shrink_gluon_kernel import _consume_tma, ring


@gluon.jit
def _producer(x_desc, a_desc, x_bufs, a_bufs, ready, empty, m0, k0, k_iters,
              NB: gl.constexpr, STAGES: gl.constexpr):
    BK: gl.constexpr = x_desc.block_type.shape[1]
    BR: gl.constexpr = a_desc.block_type.shape[0]
    nbytes: gl.constexpr = x_desc.block_type.nbytes + NB * a_desc.block_type.nbytes
    for i in range(k_iters):
        s = i % STAGES
        mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(s), nbytes)
        k = k0 + i * BK
        tma.async_copy_global_to_shared(x_desc, [m0, k], ready.index(s), x_bufs.index(s))
        for j in gl.static_range(NB):
            tma.async_copy_global_to_shared(a_desc, [j * BR, k], ready.index(s),
                                            a_bufs.index(s * NB + j))


@gluon.jit
def _consumer(x_bufs, a_bufs, ready, empty, k_iters, BM: gl.constexpr, NB: gl.constexpr,
              STAGES: gl.constexpr, layout: gl.constexpr):
    BR: gl.constexpr = a_bufs.type.shape[1]
    acc0 = gl.zeros((BM, BR), dtype=gl.float32, layout=layout)  # [BM, BR]
    acc1 = gl.zeros((BM, BR), dtype=gl.float32, layout=layout)  # [BM, BR]
    acc2 = gl.zeros((BM, BR), dtype=gl.float32, layout=layout)  # [BM, BR]
    return _consume_tma(x_bufs, a_bufs, ready, empty, acc0, acc1, acc2, k_iters, NB, STAGES,
                        1)


@gluon.jit
def _store(y_ptr, acc, m0, n0, M, N, BM: gl.constexpr, BR: gl.constexpr,
           layout: gl.constexpr):
    offs_m = m0 + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))  # [BM]
    offs_n = n0 + gl.arange(0, BR, layout=gl.SliceLayout(0, layout))  # [BR]
    ptrs = y_ptr + offs_m[:, None].to(gl.int64) * N + offs_n[None, :]  # [BM, BR]
    gl.store(ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@gluon.jit
def gemm_ws_kernel(x_desc, a_desc, y_ptr, M, N, K_SPLIT, NB: gl.constexpr,
                   STAGES: gl.constexpr, num_warps: gl.constexpr):
    BM: gl.constexpr = x_desc.block_type.shape[0]
    BK: gl.constexpr = x_desc.block_type.shape[1]
    BR: gl.constexpr = a_desc.block_type.shape[0]
    layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BR, 16])
    pid_m = gl.program_id(0)
    pid_k = gl.program_id(1)
    m0 = pid_m * BM
    k0 = pid_k * K_SPLIT
    k_iters = K_SPLIT // BK
    x_bufs, a_bufs, ready, empty = ring(x_desc, a_desc, NB, STAGES)
    acc0, acc1, acc2 = gl.warp_specialize(
        [(_consumer, (x_bufs, a_bufs, ready, empty, k_iters, BM, NB, STAGES, layout)),
         (_producer, (x_desc, a_desc, x_bufs, a_bufs, ready, empty, m0, k0, k_iters, NB,
                      STAGES))],
        [1], [40])
    y = y_ptr + pid_k.to(gl.int64) * M * N
    _store(y, acc0, m0, 0, M, N, BM, BR, layout)
    if NB > 1:
        _store(y, acc1, m0, BR, M, N, BM, BR, layout)
    if NB > 2:
        _store(y, acc2, m0, 2 * BR, M, N, BM, BR, layout)


CONFIGS = [  # BM, BK, STAGES, warps, split
    (64, 64, 6, 4, 1), (64, 64, 4, 4, 1), (128, 64, 5, 8, 1), (128, 64, 5, 8, 2),
    (64, 64, 5, 4, 1), (128, 64, 4, 8, 2), (64, 64, 6, 4, 2), (64, 64, 7, 4, 1),
    (64, 128, 3, 4, 1),
]
SHAPES = {192: (3, 64), 48: (3, 16), 64: (1, 64)}  # N: (NB blocks, BR rows a block)


def _configs(n: int):
    nb, br = SHAPES[n]
    for bm, bk, stages, warps, split in CONFIGS:
        if stages * (bm + nb * br) * bk * 2 <= 225 << 10:
            yield bm, bk, stages, warps, split


def _descs(x, a, bm, bk, br):
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    xl = gl.NVMMASharedLayout.get_default_for([bm, bk], gl.bfloat16)
    al = gl.NVMMASharedLayout.get_default_for([br, bk], gl.bfloat16)
    return (TensorDescriptor.from_tensor(x, [bm, bk], xl),
            TensorDescriptor.from_tensor(a, [br, bk], al))


def compile_only() -> int:
    """Compile every config for sm_90 without a GPU; print registers and shared memory."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    x = torch.empty(256, 4096, dtype=torch.bfloat16)
    fn = gemm_ws_kernel
    names = fn.arg_names
    for n, (bm, bk, stages, warps, split) in ((m, c) for m in SHAPES for c in _configs(m)):
        nb, br = SHAPES[n]
        a = torch.empty(n, 4096, dtype=torch.bfloat16)
        xd, ad = _descs(x, a, bm, bk, br)
        cx = dict(NB=nb, STAGES=stages, num_warps=warps)
        sig = {"x_desc": mangle_type(xd), "a_desc": mangle_type(ad), "y_ptr": "*fp32",
               "M": "i32", "N": "i32", "K_SPLIT": "i32", **{k: "constexpr" for k in cx}}
        src = GluonASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in cx.items()},
                             attrs={(2,): [["tt.divisibility", 16]]})
        try:
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                               options=dict(num_warps=warps))
        except Exception as exc:  # report and go on
            print(n, (bm, bk, stages, warps, split), "FAILED", repr(exc)[:2000])
            continue
        ptx = k.asm["ptx"]
        print(n, (bm, bk, stages, warps, split), "smem", k.metadata.shared,
              "wgmma", ptx.count("wgmma.mma_async"), "tma", ptx.count("cp.async.bulk.tensor"),
              "setmaxnreg", ptx.count("setmaxnreg"))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="8192")
    ap.add_argument("--n", default="192", help="A rows: 192 (qkv r64), 48 (qkv r16), 64")
    ap.add_argument("--compile-only", action="store_true")
    args = ap.parse_args(argv)
    if args.compile_only:
        return compile_only()
    import torch

    from lora_dispatch.bench.kernels import DenseShrinkLog, add_shrink_launch, partials_time
    from lora_dispatch.bench.timing import copy_bandwidth_gbs, gpu_time_us

    dev = torch.device("cuda")
    log = DenseShrinkLog(args.json, dev, copy_bandwidth_gbs(dev))
    k = 4096
    for n, t in itertools.product(map(int, args.n.split(",")), map(int, args.tokens.split(","))):
        nb, br = SHAPES[n]
        a = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / 64
        x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
        ref = x.float() @ a.float().T  # [T, N]
        log.add("cublas", "x@A^T", gpu_time_us(lambda x=x, a=a: x @ a.T, dev), t, n, k)
        if nb == 3:  # the shipped shrink as add_lora launches it, qkv at rank n / 3, 4 slots
            launch, plan = add_shrink_launch(t, n // 3, dev)
            log.add("shipped_shrink", str(plan.cx), gpu_time_us(launch, dev), t, n, k,
                    plan.split)
        for cfg in _configs(n):
            bm, bk, stages, warps, split = cfg
            y = torch.empty(split, t, n, device=dev, dtype=torch.float32)
            xd, ad = _descs(x, a, bm, bk, br)
            grid = (triton.cdiv(t, bm), split)

            def fn(grid=grid, xd=xd, ad=ad, y=y, cfg=cfg, t=t, n=n, nb=nb):
                bm, bk, stages, warps, split = cfg
                gemm_ws_kernel[grid](xd, ad, y, t, n, k // split, NB=nb, STAGES=stages,
                                     num_warps=warps)
            us = partials_time(fn, y, ref, dev, str(cfg))
            if us is not None:
                log.add("gluon_ws", list(cfg), us, t, n, k, split)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
