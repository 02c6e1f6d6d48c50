"""Eager host time of one public add_lora call (qkv, rank 16, 4 adapters), both launch modes."""

import torch

import lora_dispatch as ld
from lora_dispatch.bench.kernels import Problem, _build
from lora_dispatch.bench.timing import host_time_us
from lora_dispatch.launchers import set_launcher_mode

dev = torch.device("cuda")
for t in (1, 64, 2048):
    p = Problem("add_lora", 4096, t, 16, 4, torch.bfloat16, dev)
    batch, items = _build(p, 1)
    w, x, _, out = items[0]
    res = []
    for mode in ("fast", "triton"):
        set_launcher_mode(mode)
        call = (lambda out=out, x=x, w=w, batch=batch: ld.add_lora(out, x, w, batch))
        res.append(f"{mode} {host_time_us(call, dev, n=200):.1f} us")
    set_launcher_mode(None)
    print(f"add_lora host T={t}: " + ", ".join(res), flush=True)
