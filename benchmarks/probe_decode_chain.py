"""What the decode expand's dependent metadata loads cost under a CUDA graph (GPU).

    python benchmarks/probe_decode_chain.py [--json PATH] [--tokens 16,64] [--adapters 1,4]

A decode expand program waits on two rounds of metadata before its data loads: the tile's
``(slot, start, end)`` in ``tile_map``, then the slot's rank and the tile's token ids in
``sorted_tokens``; only then ``out``, ``y`` and ``B``. This times, from one CUDA graph each
(the benchmark's method, weight sets rotated), two families of kernels over the same ``out``:

- ``rmw/dN``: ``out[rows] += 1`` on the tiles' rows after ``N`` dependent scalar loads
  (``N = 0``: the rows from the program id): the cost of a level of the chain alone;
- ``expand/<head>``: a single-slice decode expand (``BM x BN`` tiles, one rank step, no
  prefetch). ``ship`` loads as the shipped kernel does: the tile map, then the rank and the
  token ids, then ``out``, ``y`` masked by the rank and ``B`` up to the rank rounded to 8.
  ``yw`` loads ``y`` without the rank and zeroes the columns past it afterwards, ``ywb`` also
  reads ``B`` up to the rank cap (``B`` is zero past the rank), ``ptok`` takes the token ids
  from a per-tile padded array indexed by the program id (beside the tile map), ``ptok_ywb``
  all three. Each is checked against the float64 product and against ``ship``.

The public op and ``out.add_(1)`` run beside them.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton
import triton.language as tl

import lora_dispatch as ld
from lora_dispatch.batch import tile_index
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import copy_bandwidth_gbs, env_record, graph_time_us, write_json

# (PTOK, YW, BCAP): token ids by program id; y loaded before the rank is known; B up to the
# rank cap (see the module docstring)
HEADS = {"ship": (0, 0, 0), "yw": (0, 1, 0), "ywb": (0, 1, 1), "ptok": (1, 0, 0),
         "ptok_ywb": (1, 1, 1)}


@triton.jit
def _rmw_chain(out_ptr, meta_ptr, T, N, NB, MLEN, stride_om, DEPTH: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    pid_n = pid % NB
    idx = pid // NB
    for i in tl.static_range(DEPTH):  # meta holds the identity: idx stays pid // NB
        idx = tl.load(meta_ptr + i * MLEN + idx)
    rows = idx * BM + tl.arange(0, BM)  # [BM]
    cols = pid_n * BN + tl.arange(0, BN)  # [BN]
    mask = (rows < T)[:, None] & (cols < N)[None, :]  # [BM, BN]
    ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]  # [BM, BN]
    o = tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, o + 1.0, mask=mask)


@triton.jit
def _expand_head(y_ptr, b_ptr, out_ptr, ranks_ptr, tok_ptr, tiles_ptr, ptok_ptr, T, L, NT, N,
                 NB, stride_yt, stride_om, R: tl.constexpr, BM: tl.constexpr,
                 BN: tl.constexpr, PTOK: tl.constexpr, YW: tl.constexpr, BCAP: tl.constexpr):
    pid = tl.program_id(0)
    pid_n = pid % NB
    pid_m = pid // NB
    slot = tl.load(tiles_ptr + pid_m)  # [tile_map row of BM]
    ok = (slot >= 0) & (slot < L)
    rank = tl.load(ranks_ptr + slot, mask=ok, other=0)
    offs_m = tl.arange(0, BM)  # [BM]
    if PTOK:
        tok = tl.load(ptok_ptr + pid_m * BM + offs_m)  # [BM], -1 past the tile
    else:
        start = tl.load(tiles_ptr + NT + pid_m)
        end = tl.load(tiles_ptr + 2 * NT + pid_m)
        tok = tl.load(tok_ptr + start + offs_m, mask=start + offs_m < end, other=T)  # [BM]
    m_mask = (tok >= 0) & (tok < T)  # [BM]
    tok64 = tl.where(m_mask, tok, 0).to(tl.int64)  # [BM]
    offs_r = tl.arange(0, R)  # [R]
    offs_n = pid_n * BN + tl.arange(0, BN)  # [BN]
    n_mask = offs_n < N  # [BN]
    if ok:
        o_ptrs = out_ptr + tok64[:, None] * stride_om + offs_n[None, :]  # [BM, BN]
        mask = m_mask[:, None] & n_mask[None, :]  # [BM, BN]
        o = tl.load(o_ptrs, mask=mask, other=0.0)  # [BM, BN]
        y_ptrs = y_ptr + tok64[:, None] * stride_yt + offs_r[None, :]  # [BM, R]
        if YW:  # issued before the rank arrives, columns past it zeroed after
            yb = tl.load(y_ptrs, mask=m_mask[:, None], other=0.0)  # [BM, R]
            yb = tl.where((offs_r < rank)[None, :], yb, 0.0)
        else:
            yb = tl.load(y_ptrs, mask=m_mask[:, None] & (offs_r < rank)[None, :], other=0.0)
        b_ptrs = (b_ptr + slot.to(tl.int64) * N * R + offs_n[None, :].to(tl.int64) * R
                  + offs_r[:, None])  # [R, BN]
        if BCAP:  # B is zero past the rank
            bb = tl.load(b_ptrs, mask=n_mask[None, :], other=0.0)  # [R, BN]
        else:
            rb = tl.multiple_of((rank + 7) // 8 * 8, 8)
            bb = tl.load(b_ptrs, mask=(offs_r < rb)[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(yb.to(bb.dtype), bb)  # [BM, BN]
        if rank > 0:
            tl.store(o_ptrs, (o.to(tl.float32) + acc.to(o.dtype).to(tl.float32)).to(o.dtype),
                     mask=mask)


def _ptok(batch, block_m: int, nt: int) -> torch.Tensor:
    tm = batch.tile_map[tile_index(block_m)].cpu()  # [3, NT]
    st = batch.sorted_tokens.cpu()
    out = torch.full((nt, block_m), -1, dtype=torch.int32)
    for j in range(nt):
        s, e = int(tm[1, j]), int(tm[2, j])
        for i in range(max(0, min(e - s, block_m))):
            out[j, i] = st[s + i]
    return out.flatten().to(batch.device)


def _case(n: int, t: int, adapters: int, r: int, nsets: int, dev: torch.device,
          dt: torch.dtype, g: torch.Generator) -> list[dict]:
    """Rows of one (width, tokens, adapters) shape; on the CPU only the heads' check."""
    rows = []
    bm, bn = 16, (256 if n >= 16384 else 128)
    slots = [i % adapters for i in range(t)]
    batch = ld.LoRABatch.from_segments([1] * t, slots, device=dev)
    nt = -(-t // bm) + min(t, adapters)
    nb = triton.cdiv(n, bn)
    ptok = _ptok(batch, bm, nt)
    tiles = batch.tile_map[tile_index(bm)]  # [3, NTmax]
    ntmax = tiles.shape[1]
    ranks = torch.full((adapters,), r, dtype=torch.int32, device=dev)
    sets = []
    for _ in range(nsets):
        b = (torch.randn(adapters, n, r, generator=g, device=dev) / r**0.5).to(dt)
        y = torch.randn(t, r, generator=g, device=dev)
        out = torch.randn(t, n, generator=g, device=dev).to(dt)
        sets.append((b, y, out))
    meta = torch.arange(nt, dtype=torch.int32, device=dev).repeat(3)  # [3 * nt], rmw/d1-d3
    grid = (nb * nt,)

    def expand(head, s):
        b, y, out = s
        _expand_head[grid](y, b, out, ranks, batch.sorted_tokens, tiles, ptok, t, adapters,
                           ntmax, n, nb, y.stride(0), out.stride(0), R=r, BM=bm, BN=bn,
                           PTOK=HEADS[head][0], YW=HEADS[head][1],
                           BCAP=HEADS[head][2], num_warps=4)

    def rmw(depth, s):
        out = s[2]
        _rmw_chain[grid](out, meta, t, n, nb, nt, out.stride(0), DEPTH=depth, BM=bm, BN=bn,
                         num_warps=4)

    ref = None
    for head in HEADS:
        b, y, out = sets[0]
        o = out.clone()
        expand(head, (b, y, o))
        if ref is None:
            sl = torch.tensor(slots, device=dev)
            delta = torch.einsum("tr,tnr->tn", y.double(), b.double()[sl])  # [T, N]
            torch.testing.assert_close(o.double(), out.double() + delta, rtol=2e-2,
                                       atol=2e-2)
            ref = o
        else:
            torch.testing.assert_close(o, ref, rtol=0, atol=0)

    def cyc(f):
        it = itertools.cycle(sets)
        return lambda: f(next(it))

    variants = {f"expand/{h}": cyc(lambda s, h=h: expand(h, s)) for h in HEADS}
    variants.update({f"rmw/d{d}": cyc(lambda s, d=d: rmw(d, s)) for d in range(4)})
    variants["out.add_(1)"] = cyc(lambda s: s[2].add_(1.0))
    if dev.type != "cuda":
        for fn in variants.values():
            fn()
        print(f"N={n} T={t} adapters={adapters}: heads agree", flush=True)
        return rows
    op = {4096: "expand", 6144: "qkv_expand", 28672: "gate_up_expand"}.get(n)
    if op is not None:  # the public op on the benchmark's inputs, for reference
        batch_p, items = _build(Problem(op, 4096, t, r, adapters, dt, dev), nsets)
        it_p = itertools.cycle(items)

        def public():
            w, _, y, out = next(it_p)
            ld.lora_expand(y, w, batch_p, out)

        variants["public"] = public
    for name, fn in variants.items():
        us = graph_time_us(fn, dev, inner=max(20, nsets), reps=20)
        row = dict(N=n, T=t, adapters=adapters, rank=r, BM=bm, BN=bn, variant=name,
                   graph_us=round(us, 3))
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="1,16,64")
    ap.add_argument("--adapters", default="1,4")
    ap.add_argument("--widths", default="4096,28672")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--sets", type=int, default=8)
    ap.add_argument("--device", default="cuda", help="cpu: a correctness pass (TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    copy = copy_bandwidth_gbs(dev) if dev.type == "cuda" else None
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float16  # the interpreter's bf16 is off
    print(f"copy bandwidth (1 GiB) {copy} GB/s", flush=True)
    rows = []
    g = torch.Generator(device=dev).manual_seed(0)
    for n, t, adapters in itertools.product(
            (int(v) for v in args.widths.split(",")), (int(v) for v in args.tokens.split(",")),
            (int(v) for v in args.adapters.split(","))):
        rows += _case(n, t, adapters, args.rank, args.sets, dev, dt, g)
    if args.json:
        write_json(args.json, {**env_record(dev), "copy_gbs": copy}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
