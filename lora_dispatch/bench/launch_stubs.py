"""Empty ``@triton.jit`` kernels with 4, 10 and 20 parameters for launch-overhead benchmarks.

One definition shared by ``benchmarks/bench_launch.py`` (GPU, per-launch host time) and
``tests/test_launcher_bench.py`` (CPU, the Python half of a launch), so both time the
same signatures. Importing this module needs Triton.
"""

import triton
import triton.language as tl

__all__ = ["k4", "k10", "k20"]


@triton.jit
def k4(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    pass


@triton.jit
def k10(x_ptr, y_ptr, z_ptr, w_ptr, n, m, stride, scale, BLOCK: tl.constexpr,
        ACT: tl.constexpr):
    pass


@triton.jit
def k20(a_ptr, b_ptr, c_ptr, d_ptr, e_ptr, f_ptr, m, n, k, sa0, sa1, sb0, sb1, sc0, sc1,
        scale, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr):
    pass
