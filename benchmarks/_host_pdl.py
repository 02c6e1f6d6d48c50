"""Host time of eager add_lora and lora_shrink with LORA_DISPATCH_PDL=0 / 1 alternating
(GPU; qkv, rank 16, 4 adapters, T = 1 and 64; three rounds each, printed).

    PYTHONPATH=. python benchmarks/_host_pdl.py
"""

import os

import torch

import lora_dispatch as ld
from lora_dispatch.bench.timing import host_time_us


def main() -> None:
    dev = torch.device("cuda")
    w = ld.LoRAWeights(4, 4096, (4096, 1024, 1024), 16, dtype=torch.bfloat16, device=dev)
    for s in range(4):
        a = torch.randn(16, 4096, device=dev) * 0.01
        w.load(s, a, torch.randn(6144, 16, device=dev) * 0.01, 1.0)
    res: dict[tuple, list] = {}
    for t in (1, 64):
        x = torch.randn(t, 4096, device=dev, dtype=torch.bfloat16)
        out = torch.zeros(t, 6144, device=dev, dtype=torch.bfloat16)
        batch = ld.LoRABatch.from_token_adapters(torch.arange(t, device=dev) % 4)

        def add(out=out, x=x, batch=batch):
            ld.add_lora(out, x, w, batch)

        def shrink(x=x, batch=batch):
            ld.lora_shrink(x, w, batch)

        for _ in range(3):
            for pdl in ("0", "1"):
                os.environ["LORA_DISPATCH_PDL"] = pdl
                w.__dict__.pop("_triton_plans", None)  # plans read the variable when built
                add()
                torch.cuda.synchronize()
                res.setdefault((t, pdl), []).append(
                    (host_time_us(add, dev, n=200, rounds=7),
                     host_time_us(shrink, dev, n=200, rounds=7)))
    for (t, pdl), v in sorted(res.items()):
        print(f"T {t} PDL {pdl}: add_lora host {[round(a, 1) for a, _ in v]} us, "
              f"shrink host {[round(b, 1) for _, b in v]} us")


if __name__ == "__main__":
    main()
