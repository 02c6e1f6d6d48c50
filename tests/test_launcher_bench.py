"""CPU benchmarks of the Python half of a launch (no GPU needed).

* ``triton``: what ``JITFunction.run`` does per call before launching: its generated
  binder, the cache key (``compute_cache_key`` in 3.5+, string keys before) and the kernel
  cache lookup.
* ``fast_key``: fast_launch's generated key function plus its dict lookup.
* ``fast_hit``: the whole generated hit path (guards, key, lookup, grid, stream, call) with a
  no-op standing in for the compiled kernel's launcher.

Runs once as a test under the default ``--benchmark-disable``; time it with
``pytest tests/test_launcher_bench.py --benchmark-enable`` (``ci/launcher_versions.sh`` with
``LORA_DISPATCH_BENCH=1`` does it per Triton release).
"""

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from lora_dispatch.launchers.fast import FastLauncher  # noqa: E402
from lora_dispatch.launchers.native import available as native_available  # noqa: E402

needs_native = pytest.mark.skipif(not native_available(),
                                  reason="native tier needs Triton 3.5/3.6 and a C compiler")
from lora_dispatch.launchers.versions import get_adapter, reference_backend  # noqa: E402

ADAPTER = get_adapter()


from lora_dispatch.bench.launch_stubs import k4, k10, k20  # noqa: E402

_buf = torch.empty(1 << 12, dtype=torch.float16)


def _args(n_args: int) -> tuple[tuple, dict]:
    t = _buf
    if n_args == 4:
        return (t, t, 4096), {"BLOCK": 256}
    if n_args == 10:
        return (t, t, t, t, 4096, 128, 4096, 0.5), {"BLOCK": 256, "ACT": 1}
    return ((t, t, t, t, t, t, 128, 4096, 4096, 4096, 1, 4096, 1, 4096, 1, 0.5),
            {"BM": 64, "BN": 64, "BK": 32, "ACT": 0})


KERNELS = {4: k4, 10: k10, 20: k20}


def _triton_per_call(jit, backend):
    """Triton's binder + cache key + kernel-cache lookup, as ``JITFunction.run`` does."""
    from triton.runtime import jit as jitmod

    v = ADAPTER.version
    if v >= (3, 2):
        binder = jitmod.create_function_from_signature(jit.signature, jit.params, backend)
    else:
        binder = jitmod.create_function_from_signature(jit.signature, jit.params)
    kernel_cache: dict = {}
    key_cache: dict = {}
    if v >= (3, 5):
        compute = jitmod.compute_cache_key

        def per_call(*args, **kwargs):
            kwargs["debug"] = False
            _, spec, options = binder(*args, **kwargs)
            return kernel_cache.get(compute(key_cache, spec, options))
    elif v >= (3, 3):
        def per_call(*args, **kwargs):
            kwargs["debug"] = False
            _, spec, options = binder(*args, **kwargs)
            return kernel_cache.get(str(spec) + str(options))
    else:
        def per_call(*args, **kwargs):
            kwargs["debug"] = False
            _, sig_and_spec, constexpr_vals, _, excess = binder(*args, **kwargs)
            return kernel_cache.get("".join(sig_and_spec) + str((constexpr_vals, excess)))
    return per_call


def _fast(jit):
    launcher = FastLauncher(jit).build_for_tests(reference_backend("cuda"))
    args, kwargs = _args(len(jit.params))
    key = launcher.key(*args, **kwargs)
    noop = lambda *a: None  # noqa: E731 - stands in for the compiled launcher
    launcher._fl_caches[0][key] = (noop, 0, (4, 1, 0), None)
    return launcher


@pytest.mark.parametrize("n_args", [4, 10, 20])
def test_bench_triton_bind_and_key(benchmark, n_args: int) -> None:
    jit = KERNELS[n_args]
    per_call = _triton_per_call(jit, reference_backend("cuda"))
    args, kwargs = _args(n_args)
    benchmark.group = f"python-half-{n_args}-args"
    benchmark(lambda: per_call(*args, **kwargs))


@pytest.mark.parametrize("n_args", [4, 10, 20])
def test_bench_fast_key_and_lookup(benchmark, n_args: int) -> None:
    launcher = _fast(KERNELS[n_args])
    args, kwargs = _args(n_args)
    key_fn = launcher._fl_ns["_fl_key"]
    cache = launcher._fl_caches[0]
    benchmark.group = f"python-half-{n_args}-args"
    assert cache.get(key_fn(*args, **kwargs)) is not None
    benchmark(lambda: cache.get(key_fn(*args, **kwargs)))


@pytest.mark.parametrize("n_args", [4, 10, 20])
def test_bench_fast_hit_path(benchmark, n_args: int) -> None:
    launcher = _fast(KERNELS[n_args])
    args, kwargs = _args(n_args)
    grid = (128,)
    benchmark.group = f"python-half-{n_args}-args"
    before = launcher.cache_info().hits
    launcher[grid](*args, **kwargs)
    assert launcher.cache_info().hits == before + 1
    benchmark(lambda: launcher[grid](*args, **kwargs))



@needs_native
@pytest.mark.parametrize("n_args", [4, 10, 20])
def test_bench_native_key_and_lookup(benchmark, n_args: int) -> None:
    """The native tier's C key + variant lookup (an empty grid, so nothing is launched and
    no GPU is needed): the counterpart of ``fast_key`` above."""
    from lora_dispatch.launchers import native
    from lora_dispatch.launchers.codegen import NOT_SET

    jit = KERNELS[n_args]
    launcher = FastLauncher(jit).build_for_tests(reference_backend("cuda"), lean=True,
                                                 native=True)
    assert launcher.launch_tier == "native"
    args, kwargs = _args(n_args)
    ns = launcher._fl_ns
    bound = jit.signature.bind(*args, **kwargs)
    bound.apply_defaults()
    slots = tuple(bound.arguments.values()) + (NOT_SET,) * len(ns["_fl_nat_slots"])
    key = launcher.native_key(*args, **kwargs)
    assert key is not None
    kernel = object()
    types = bytes(native.T_SKIP for _ in jit.params)
    assert ns["_fl_natreg"](ns["_fl_nat"], 0, key, 1, 128, 1, 0, 0, 0, 2, types, kernel, slots)
    launch, table, grid = ns["_fl_natlaunch"], ns["_fl_nat"], (0,)
    assert launch(table, grid, 0, 0, *slots) is kernel
    benchmark.group = f"python-half-{n_args}-args"
    benchmark(lambda: launch(table, grid, 0, 0, *slots))
