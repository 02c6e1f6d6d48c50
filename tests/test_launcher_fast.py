"""fast_launch's launch path on CPU, with a stand-in for Triton's compile + launcher.

``JITFunction.run`` is replaced by a fake that returns a fake CompiledKernel whose ``run``
records its arguments, so hits, misses, grids, guards and fallbacks can be checked without a
GPU, under any Triton release.
"""

import logging
import threading

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from lora_dispatch.launchers import (  # noqa: E402
    FastLauncher,
    fast_launch,
    launcher_mode,
    set_launcher_mode,
)
from lora_dispatch.launchers import fast as fast_mod  # noqa: E402
from lora_dispatch.launchers.versions import get_adapter, reference_backend  # noqa: E402

ADAPTER = get_adapter()


@triton.jit
def k_add(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr, ACT: tl.constexpr = 0):
    pass


class FakeCompiled:
    def __init__(self, tag):
        self.tag = tag
        self.calls = []
        self.function = 1000 + tag
        self.packed_metadata = (4, 1, 0)
        self.hash = f"hash{tag}"

    @property
    def run(self):
        return lambda *a: self.calls.append(a)


class FakeTriton:
    """Replaces ``jit.run``: one FakeCompiled per distinct call signature it sees."""

    def __init__(self, jit):
        self.jit = jit
        self.calls = []
        self.kernels = []

    def __call__(self, *args, grid, warmup, **kwargs):
        self.calls.append((args, grid, kwargs))
        k = FakeCompiled(len(self.kernels))
        self.kernels.append(k)
        return k


@pytest.fixture
def kernel(monkeypatch):
    set_launcher_mode("fast")
    fake = FakeTriton(k_add)
    monkeypatch.setattr(k_add, "run", fake, raising=False)
    launcher = FastLauncher(k_add).build_for_tests(reference_backend("cuda"))
    yield launcher, fake
    k_add.pre_run_hooks.clear()
    set_launcher_mode(None)


def _expected_launch_args(x, y, n, scale, block, act):
    if ADAPTER.passes_constexprs:
        return (x, y, n, scale, block, act)
    return (x, y, n, scale)


def test_miss_then_hit_calls_compiled_launcher_directly(kernel) -> None:
    launcher, fake = kernel
    x = torch.empty(64, dtype=torch.float32)
    ret = launcher[(4,)](x, x, 64, 0.5, BLOCK=16)
    assert len(fake.calls) == 1 and ret is fake.kernels[0]
    assert launcher.cache_info()[:3] == (0, 1, 1)
    ret = launcher[(4, 2)](x, x, 64, 0.5, BLOCK=16)
    assert ret is fake.kernels[0] and len(fake.calls) == 1
    (call,) = fake.kernels[0].calls
    assert call[:9] == (4, 2, 1, 0, 1000, (4, 1, 0), None, None, None)
    assert call[9:] == _expected_launch_args(x, x, 64, 0.5, 16, 0)
    assert launcher.cache_info().hits == 1


def test_alignment_and_int_classes_make_new_variants(kernel) -> None:
    launcher, fake = kernel
    x = torch.empty(64, dtype=torch.float32)
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
    launcher[(1,)](x[1:], x, 64, 0.5, BLOCK=16)      # misaligned pointer
    launcher[(1,)](x, x, 65, 0.5, BLOCK=16)          # n % 16 != 0
    launcher[(1,)](x, x, 1, 0.5, BLOCK=16)           # n == 1
    launcher[(1,)](x, x, 2**31, 0.5, BLOCK=16)       # int64
    launcher[(1,)](x, x, 64, 0.5, BLOCK=32)          # constexpr
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16, num_warps=8)
    assert launcher.cache_info().misses == 7 and launcher.cache_info().variants == 7
    launcher[(1,)](x[4:], x, 48, 2.0, BLOCK=16)      # same class as the first call
    assert launcher.cache_info().misses == 7 and launcher.cache_info().hits == 1


def test_callable_grid_gets_all_bound_arguments(kernel) -> None:
    launcher, fake = kernel
    seen = []

    def grid(meta):
        seen.append(dict(meta))
        return (meta["n"] // meta["BLOCK"],)

    x = torch.empty(64, dtype=torch.float32)
    launcher[grid](x, x, 64, 0.5, BLOCK=16)
    launcher[grid](x, x, 64, 0.5, BLOCK=16)
    assert seen[-1] == {"x_ptr": x, "y_ptr": x, "n": 64, "scale": 0.5, "BLOCK": 16, "ACT": 0}
    assert fake.kernels[0].calls[0][:3] == (4, 1, 1)


def test_options_reach_triton_on_a_miss(kernel) -> None:
    launcher, fake = kernel
    x = torch.empty(64, dtype=torch.float32)
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16, num_warps=2, num_stages=3, maxnreg=64)
    assert fake.calls[0][2] == {"num_warps": 2, "num_stages": 3, "maxnreg": 64}


def test_guards_fall_back_to_triton(kernel) -> None:
    launcher, fake = kernel
    x = torch.empty(64, dtype=torch.float32)
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
    k_add.pre_run_hooks.append(lambda *a, **k: None)
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
    k_add.pre_run_hooks.clear()
    assert launcher.cache_info().fallbacks == 1 and len(fake.calls) == 2
    if "_fl_jit.debug" in ADAPTER.state_exprs:  # 3.2 reads TRITON_DEBUG instead
        old = k_add.debug
        try:
            k_add.debug = not old
            launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
            assert launcher.cache_info().fallbacks == 2
        finally:
            k_add.debug = old
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
    assert launcher.cache_info().hits == 1


def test_launch_hooks_take_triton_path(kernel) -> None:
    launcher, fake = kernel
    x = torch.empty(64, dtype=torch.float32)
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
    hook = lambda *a, **k: None  # noqa: E731
    if ADAPTER.version >= (3, 5):
        from triton import knobs

        knobs.runtime.launch_enter_hook.add(hook)
        try:
            launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
        finally:
            knobs.runtime.launch_enter_hook.remove(hook)
    elif ADAPTER.version >= (3, 4):
        from triton import knobs

        knobs.runtime.launch_enter_hook = hook
        try:
            launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
        finally:
            knobs.runtime.launch_enter_hook = None
    else:
        from triton.compiler import CompiledKernel

        CompiledKernel.launch_enter_hook = hook
        try:
            launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
        finally:
            CompiledKernel.launch_enter_hook = None
    assert launcher.cache_info().fallbacks == 1 and launcher.cache_info().hits == 0
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
    assert launcher.cache_info().hits == 1


def test_mode_override_and_env(kernel, monkeypatch) -> None:
    launcher, fake = kernel
    x = torch.empty(64, dtype=torch.float32)
    assert set_launcher_mode("triton") == "triton"
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
    launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
    assert len(fake.calls) == 2 and launcher.cache_info().path == "triton"
    assert set_launcher_mode("fast") == "fast"
    assert launcher.cache_info().path == "fast"
    monkeypatch.setenv("LORA_DISPATCH_LAUNCHER", "triton")
    assert set_launcher_mode(None) == "triton" == launcher_mode()
    monkeypatch.setenv("LORA_DISPATCH_LAUNCHER", "fast")
    assert set_launcher_mode(None) == "fast"
    with pytest.raises(ValueError):
        set_launcher_mode("cuda-graphs")


def test_attributes_fall_through(kernel) -> None:
    launcher, _ = kernel
    assert launcher.fn is k_add.fn
    assert launcher.__name__ == k_add.__name__
    assert launcher.arg_names == k_add.arg_names
    assert launcher.__wrapped__ is k_add
    assert "def _fl_launch(_fl_grid, x_ptr, y_ptr, n, scale, BLOCK" in launcher.launcher_source
    assert fast_launch(launcher) is launcher


def test_hook_skip_and_async_results_are_not_stored(kernel, monkeypatch) -> None:
    launcher, fake = kernel
    monkeypatch.setattr(k_add, "run", lambda *a, **k: None, raising=False)
    x = torch.empty(64, dtype=torch.float32)
    assert launcher[(1,)](x, x, 64, 0.5, BLOCK=16) is None
    assert launcher.cache_info().variants == 0


def test_concurrent_misses_store_each_variant_once(kernel) -> None:
    launcher, fake = kernel
    x = torch.empty(64, dtype=torch.float32)
    errors = []

    def work(i):
        try:
            for j in range(50):
                launcher[(1,)](x, x, 16 * (j % 5) + 16, 0.5, BLOCK=16 << (i % 2))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    info = launcher.cache_info()
    assert info.variants == 2 and info.hits + info.misses == 200


def test_unexpected_internals_fall_back_once_with_a_log(monkeypatch, caplog) -> None:
    set_launcher_mode("fast")
    fake = FakeTriton(k_add)
    monkeypatch.setattr(k_add, "run", fake, raising=False)

    def boom(*a, **k):
        raise fast_mod.UnsupportedTriton("pretend this release is unknown")

    monkeypatch.setattr(fast_mod, "get_adapter", boom)
    monkeypatch.setattr(fast_mod, "_logged", set())
    launcher = FastLauncher(k_add)
    x = torch.empty(64, dtype=torch.float32)
    with caplog.at_level(logging.WARNING, logger="lora_dispatch.launchers"):
        launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
        launcher[(1,)](x, x, 64, 0.5, BLOCK=16)
        FastLauncher(k_add)[(1,)](x, x, 64, 0.5, BLOCK=16)
    records = [r for r in caplog.records if r.name == "lora_dispatch.launchers"]
    assert len(records) == 1 and "pretend this release is unknown" in records[0].getMessage()
    assert len(fake.calls) == 3 and launcher.cache_info().path == "delegate"


def test_autotuner_and_heuristics_are_delegated() -> None:
    try:
        tuned = triton.heuristics({"ACT": lambda meta: 1})(k_add)
    except Exception as exc:  # pragma: no cover - constructors that need a GPU
        pytest.skip(f"cannot build Heuristics on CPU: {exc}")
    launcher = fast_launch(tuned)
    assert launcher.cache_info().path == "delegate"
    assert "heuristics" in launcher.fast_path_reason
    assert launcher.fn is tuned.fn


def test_interpreter_functions_are_delegated() -> None:
    from triton.runtime.interpreter import InterpretedFunction

    launcher = fast_launch(InterpretedFunction(k_add.fn))
    assert launcher.cache_info().path == "delegate"
    assert "TRITON_INTERPRET" in launcher.fast_path_reason


def test_lean_path_relays_kernels_without_a_direct_c_entry(monkeypatch) -> None:
    set_launcher_mode("fast")
    fake = FakeTriton(k_add)
    monkeypatch.setattr(k_add, "run", fake, raising=False)
    launcher = FastLauncher(k_add).build_for_tests(reference_backend("cuda"), lean=True)
    assert ("lean C launch" in launcher.launcher_source) == ADAPTER.lean_capable
    x = torch.empty(64, dtype=torch.float32)
    launcher[(3,)](x, x, 64, 0.5, BLOCK=16)
    launcher[(3,)](x, x, 64, 0.5, BLOCK=16)
    (call,) = fake.kernels[0].calls
    assert call[:9] == (3, 1, 1, 0, 1000, (4, 1, 0), None, None, None)
    assert call[9:] == _expected_launch_args(x, x, 64, 0.5, 16, 0)


def test_pdl_names_a_parameter() -> None:
    """fast_launch(pdl=NAME) records which constexpr turns programmatic dependent launch on
    (the native tier reads it when it stores a variant) and rejects unknown names."""

    @triton.jit
    def k(x_ptr, n, PDL: tl.constexpr):
        pass

    launcher = fast_launch(pdl="PDL")(k)
    assert launcher._fl_pdl == 2
    assert fast_launch(k)._fl_pdl is None
    with pytest.raises(ValueError, match="pdl must name a parameter"):
        fast_launch(k, pdl="MISSING")


@triton.jit
def k_warps_param(x_ptr, n, BLOCK: tl.constexpr, num_warps: tl.constexpr, TAIL: tl.constexpr):
    pass


def test_parameters_named_like_options_reach_triton_as_keywords(monkeypatch) -> None:
    """Gluon kernels take ``num_warps`` as a constexpr parameter; Triton reads launch options
    from keywords only, so a miss hands that parameter (and those after it) to Triton by
    keyword however the caller passed it, and both call styles share one variant."""
    set_launcher_mode("fast")
    fake = FakeTriton(k_warps_param)
    monkeypatch.setattr(k_warps_param, "run", fake, raising=False)
    try:
        launcher = FastLauncher(k_warps_param).build_for_tests(reference_backend("cuda"))
        x = torch.empty(64, dtype=torch.float32)
        launcher[(1,)](x, 64, 16, 8, 3)
        ((args, _, kwargs),) = fake.calls
        assert args == (x, 64, 16) and kwargs == {"num_warps": 8, "TAIL": 3}
        launcher[(1,)](x, 64, 16, num_warps=8, TAIL=3)
        assert len(fake.calls) == 1 and launcher.cache_info().hits == 1
    finally:
        set_launcher_mode(None)


def test_global_check_passes_the_same_object_without_comparing() -> None:
    """The per-call "global changed" check (Triton's rule): the same object or an equal one
    passes, a changed value raises; the same object is never compared (a ``constexpr``
    global's ``!=`` costs ~1 µs)."""
    from types import SimpleNamespace

    from lora_dispatch.launchers.fast import _check_globals

    class NoCompare:
        def __ne__(self, other):
            raise AssertionError("compared")

        __hash__ = object.__hash__

    same = NoCompare()
    g = {"A": same, "B": 40}
    jit = SimpleNamespace(used_global_vals={("A", id(g)): (same, g), ("B", id(g)): (40, g)})
    _check_globals(jit)
    g["B"] = 40.0  # equal: unchanged
    _check_globals(jit)
    g["B"] = 41
    with pytest.raises(RuntimeError, match="Global variable B has changed"):
        _check_globals(jit)
    del g["B"]  # gone: changed
    with pytest.raises(RuntimeError, match="Global variable B has changed"):
        _check_globals(jit)
