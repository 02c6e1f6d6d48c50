"""Compile the kernels for sm_90 / gfx942 without a GPU (see lora_dispatch.bench.compile)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lora_dispatch.bench.compile import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
