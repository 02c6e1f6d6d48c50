"""Benchmark the Triton kernels (see lora_dispatch.bench.kernels); ``--quick``, ``--json PATH``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lora_dispatch.bench.kernels import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
