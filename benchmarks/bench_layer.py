"""Benchmark one Llama-3-8B decoder layer with and without LoRA (see lora_dispatch.bench.layer).

``python benchmarks/bench_layer.py [--quick] [--json PATH] [--plot PATH]``
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lora_dispatch.bench.layer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
