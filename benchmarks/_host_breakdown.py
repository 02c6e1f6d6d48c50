"""Host time of one eager add_lora (qkv 4096 -> 6144, rank 16, 4 adapters), layer by layer.

    python benchmarks/_host_breakdown.py [--json PATH]

Runs :func:`lora_dispatch.bench.kernels.host_breakdown` (which ``bench_kernels.py`` also runs
at T = 16) at T = 1, 64 and 2048.
"""

import argparse

import torch

from lora_dispatch.bench.kernels import host_breakdown
from lora_dispatch.bench.timing import env_record, write_json

ap = argparse.ArgumentParser()
ap.add_argument("--json", default=None)
args = ap.parse_args()
dev = torch.device("cuda")
rows = host_breakdown(dev, tokens=(1, 16, 64))
if args.json:
    write_json(args.json, env_record(dev), rows)
