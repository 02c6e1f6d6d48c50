"""Does a driver memset node clear the public decode shrink's output cheaper than the zero
kernel? (GPU, CUDA-graph replay.)

    python benchmarks/probe_memset_node.py [--json PATH] [--adapters 16]

In a CUDA graph the public ``lora_shrink`` at decode is two kernel nodes: the zero fill,
then the split-K atomics (0.8-1.0 µs of 3.3-4.6 µs at 16 adapters). For hidden 4096, rank
16 and 64, T = 1, 16, 64, each from a graph of 20 calls:

- ``public``: ``lora_shrink`` as shipped (zero kernel + split-K kernel);
- ``memset+kernel``: ``cuMemsetD32Async`` (captured as a memset node), then the split-K
  kernel;
- ``kernel``: the split-K kernel alone into a buffer zeroed once (the floor);
- ``memset``: the memset node alone; ``zero``: the zero kernel alone.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools

import torch

import lora_dispatch as ld
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import env_record, graph_time_us, write_json
from lora_dispatch.kernels.triton import launch as L


def _memset_fn(dev: torch.device):
    cuda = ctypes.CDLL("libcuda.so.1")
    f = cuda.cuMemsetD32Async
    f.argtypes = [ctypes.c_uint64, ctypes.c_uint, ctypes.c_size_t, ctypes.c_void_p]
    f.restype = ctypes.c_int

    def memset(y: torch.Tensor) -> None:
        rc = f(y.data_ptr(), 0, y.numel(), torch.cuda.current_stream(dev).cuda_stream)
        if rc:
            raise RuntimeError(f"cuMemsetD32Async: CUresult {rc}")

    return memset


def _probe(t: int, rank: int, adapters: int, dev: torch.device, memset) -> dict:
    p = Problem("shrink", 4096, t, rank, adapters, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, _ = items[0]
    s, r = w.num_slices, w.max_rank
    ap_ = L.plan_for("shrink", w, t, "zero_fill")
    ys = (0, t * r, r, 1)
    res: dict[str, float | None] = {"split": ap_.split}
    res["public"] = graph_time_us(lambda: ld.lora_shrink(x, w, batch), dev)

    def memset_kernel():
        y = torch.empty((s, t, r), dtype=torch.float32, device=dev)
        memset(y)
        L._launch_shrink(ap_, x, w, batch, y, t, ys)
        return y

    res["memset+kernel"] = graph_time_us(memset_kernel, dev)
    yz = torch.zeros((s, t, r), device=dev)
    res["kernel"] = graph_time_us(lambda: L._launch_shrink(ap_, x, w, batch, yz, t, ys), dev)
    res["memset"] = graph_time_us(lambda: memset(yz), dev)
    res["zero"] = graph_time_us(lambda: yz.zero_(), dev)
    y = memset_kernel()
    want = ld.lora_shrink(x, w, batch)
    torch.cuda.synchronize(dev)
    res["max_abs_diff"] = float((y - want).abs().max())
    print(f"T={t} r={rank} a={adapters} " + " ".join(
        f"{k}={v:.2f}" for k, v in res.items() if isinstance(v, float)), flush=True)
    return dict(T=t, rank=rank, adapters=adapters, **res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", default=None)
    ap.add_argument("--adapters", default="16")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    memset = _memset_fn(dev)
    rows = [_probe(t, rank, a, dev, memset)
            for a, rank, t in itertools.product(map(int, args.adapters.split(",")), (16, 64),
                                                (1, 16, 64))]
    if args.json:
        write_json(args.json, env_record(dev), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
