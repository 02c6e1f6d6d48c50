"""Launch groups (several kernels, one native call): the C entry's lookup-before-launch
contract and the Python object's guards, without a GPU (empty grids launch nothing)."""

from __future__ import annotations

import ctypes.util

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from lora_dispatch.launchers import LaunchGroup, fast_launch, native  # noqa: E402
from lora_dispatch.launchers.codegen import NOT_SET  # noqa: E402
from lora_dispatch.launchers.versions import reference_backend  # noqa: E402

needs_native = pytest.mark.skipif(not native.available(),
                                  reason="native tier needs Triton 3.5/3.6 and a C compiler")


@triton.jit
def k_first(x_ptr, n, BLOCK: tl.constexpr):
    pass


@triton.jit
def k_second(y_ptr, x_ptr, m, stride, FLAG: tl.constexpr):
    pass


def _table(mod, nparams: int, codes: list[int]):
    return mod.fl_new(bytes(codes), nparams, native.torch_dtypes(), native.tensor_types(),
                      NOT_SET)


def _tables():
    """Two C tables with one registered variant each, and their slots."""
    mod = native.load()
    sa = native.C_GENERIC_SA
    ta = _table(mod, 3, [sa, sa, native.C_CONSTEXPR, native.C_OPTION])
    tb = _table(mod, 5, [sa, sa, sa, sa, native.C_CONSTEXPR, native.C_OPTION])
    x = torch.empty(64, dtype=torch.float16)
    y = torch.empty(64, dtype=torch.float32)
    slots_a = (x, 4096, 128, 4)
    slots_b = (y, x, 64, 4096, True, 8)
    ka, kb = object(), object()
    ptr, i32, skip = native.T_PTR, native.T_I32, native.T_SKIP
    assert mod.fl_register(ta, 0, mod.fl_key(ta, 0, *slots_a), 1, 128, 1, 0, 0, 0, 0,
                           bytes([ptr, i32, skip]), ka, slots_a)
    assert mod.fl_register(tb, 0, mod.fl_key(tb, 0, *slots_b), 2, 256, 1, 0, 0, 0, 0,
                           bytes([ptr, ptr, i32, i32, skip]), kb, slots_b)
    return mod, ta, tb, slots_a, slots_b


@needs_native
def test_group_looks_up_every_call_before_launching() -> None:
    mod, ta, tb, sa, sb = _tables()
    empty = ((0,), (0, 1))
    assert mod.fl_launch_group((ta, tb), empty, 0, 0, *sa, *sb) is None
    assert mod.fl_info(ta)[0] == 1 and mod.fl_info(tb)[0] == 1
    # the second call misses: nothing launched, not even the first
    miss_b = (sb[0], sb[1], 65, *sb[3:])
    assert mod.fl_launch_group((ta, tb), empty, 0, 0, *sa, *miss_b) is NotImplemented
    assert mod.fl_info(ta)[0] == 1
    # a grid the C side does not take (a list) sends the whole group to Python
    assert mod.fl_launch_group((ta, tb), ((0,), [0]), 0, 0, *sa, *sb) is NotImplemented
    assert mod.fl_launch_group((ta, tb), empty, 0, 1, *sa, *sb) is NotImplemented  # device
    assert mod.fl_launch_group((tb,), ((0,),), 0, 0, *sb) is None
    assert mod.fl_info(ta)[0] == 1 and mod.fl_info(tb)[0] == 2


@needs_native
def test_time_group_times_both_halves_without_side_effects_on_misses() -> None:
    """``fl_time_group`` (benchmarks): per repetition, the keys and lookups of every call,
    then the launches (empty grids here: no driver); None where the group would not launch,
    the same argument errors as ``fl_launch_group``."""
    mod, ta, tb, sa, sb = _tables()
    empty = ((0,), (0,))
    prep, launch = mod.fl_time_group(50, (ta, tb), empty, 0, 0, *sa, *sb)
    assert prep > 0 and launch >= 0
    assert mod.fl_info(ta)[0] == 50 and mod.fl_info(tb)[0] == 50  # 50 launches each
    miss_b = (sb[0], sb[1], 65, *sb[3:])
    assert mod.fl_time_group(5, (ta, tb), empty, 0, 0, *sa, *miss_b) is None
    assert mod.fl_info(ta)[0] == 50
    with pytest.raises(ValueError, match="reps"):
        mod.fl_time_group(0, (ta, tb), empty, 0, 0, *sa, *sb)
    with pytest.raises(TypeError, match="expected 14 arguments, got 13"):
        mod.fl_time_group(5, (ta, tb), empty, 0, 0, *sa, *sb[:-1])


@needs_native
def test_group_rejects_bad_arguments() -> None:
    mod, ta, tb, sa, sb = _tables()
    empty = ((0,), (0,))
    with pytest.raises(TypeError, match="expected 14 arguments, got 13"):
        mod.fl_launch_group((ta, tb), empty, 0, 0, *sa, *sb[:-1])
    with pytest.raises(TypeError, match="native Launchers"):
        mod.fl_launch_group((ta, object()), empty, 0, 0, *sa, *sb)
    with pytest.raises(ValueError, match="1 to 4 launchers"):
        mod.fl_launch_group((ta,) * 5, ((0,),) * 5, 0, 0, *(sa * 5))
    with pytest.raises(ValueError, match="one grid each"):
        mod.fl_launch_group((ta, tb), ((0,),), 0, 0, *sa, *sb)
    with pytest.raises(TypeError, match="launchers: tuple"):
        mod.fl_launch_group([ta, tb], empty, 0, 0, *sa, *sb)


@needs_native
@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None,
                    reason="a CUDA driver is installed: a real launch would run")
def test_group_reaches_the_driver_only_when_every_call_hits() -> None:
    mod, ta, tb, sa, sb = _tables()
    with pytest.raises(RuntimeError, match="libcuda"):
        mod.fl_launch_group((ta, tb), ((1,), (1,)), 0, 0, *sa, *sb)


def test_launch_group_object_contract() -> None:
    a, b = fast_launch(k_first), fast_launch(k_second)
    with pytest.raises(ValueError, match="1 to 4 kernels"):
        LaunchGroup()
    with pytest.raises(TypeError, match="@fast_launch"):
        LaunchGroup(a, k_second)
    g = LaunchGroup(a, b)
    assert g.options(0, num_stages=2, num_warps=8) == (8, 2, NOT_SET)
    assert g.options(1) == (NOT_SET, NOT_SET, NOT_SET)
    with pytest.raises(TypeError, match="unknown launch options"):
        g.options(0, maxnreg=64)
    # unbuilt launchers: the caller launches each kernel itself
    assert not g.native
    assert g(((1,), (1,)), ()) is False


@needs_native
def test_launch_group_object_takes_native_tables_and_guards() -> None:
    backend = reference_backend("cuda")
    a = fast_launch(k_first).build_for_tests(backend, lean=True, native=True)
    b = fast_launch(k_second).build_for_tests(backend, lean=True, native=True)
    g = LaunchGroup(a, b)
    assert g.native
    x = torch.empty(64, dtype=torch.float16)
    y = torch.empty(64, dtype=torch.float32)
    slots = (x, 4096, 128, *g.options(0, num_warps=4), y, x, 64, 4096, True,
             *g.options(1, num_warps=4))
    empty = ((0,), (0,))
    assert g(empty, slots) is False  # no variant compiled yet
    na, nb = a._fl_ns, b._fl_ns
    ptr, i32, skip = native.T_PTR, native.T_I32, native.T_SKIP
    for ns, own, types in ((na, slots[:6], bytes([ptr, i32, skip])),
                           (nb, slots[6:], bytes([ptr, ptr, i32, i32, skip]))):
        key = ns["_fl_natkey"](ns["_fl_nat"], 0, *own)
        assert ns["_fl_natreg"](ns["_fl_nat"], 0, key, 1, 128, 1, 0, 0, 0, 0, types, object(),
                                own)
    assert g(empty, slots) is True and g.launches == 1
    k_second.pre_run_hooks.append(lambda *args, **kwargs: None)
    try:
        assert g(empty, slots) is False  # a guard of one kernel fails: no group launch
    finally:
        k_second.pre_run_hooks.clear()
    assert g(empty, slots) is True
    a._fl_set_plain(True)  # LORA_DISPATCH_LAUNCHER=triton for one of them
    try:
        assert g(empty, slots) is False
    finally:
        a._fl_set_plain(False)
    assert g(empty, slots) is True and g.launches == 3
    a._fl_reset()  # a rebuilt launcher (new tables): the group waits for the rebuild
    assert g(empty, slots) is False and not g.native


def test_add_lora_group_slots_follow_the_launch_argument_order() -> None:
    """The memoized launch-group slots of add_lora are exactly shrink args + constexprs +
    options, then the expand's: the order the separate launches use (CPU tensors: only the
    host-side assembly is checked). A new workspace or batch rebuilds the memo."""
    import lora_dispatch as ld
    from lora_dispatch.kernels.triton import launch as L

    if L._GROUP is None:
        pytest.skip("no fast launcher")
    w = ld.LoRAWeights(3, 64, (32, 16, 16), 8, dtype=torch.float16)
    batch = ld.LoRABatch.from_token_adapters([0, 1, -1, 2, 0])
    t = 5
    p = L.plan_for("add", w, t, "two_pass")
    sp, ep = p.shrink, p.expand
    ys = (w.num_slices * t * w.max_rank, t * w.max_rank, w.max_rank, 1)
    for ws in (torch.empty(4096), torch.empty(8192)):
        for x in (torch.randn(t, 64).half(), torch.randn(t, 128).half()[:, ::2]):
            out = torch.randn(t, 3 * w.total_out)[:, 1 : 1 + w.total_out]
            want = (*L._shrink_args(sp, x, x.stride(), w, batch, ws, t, ys), *sp.tail,
                    *L._expand_args(ep, ws, w, batch, out, out.stride(), t, ys), *ep.tail)
            got = L._group_slots(p, out, x, w, batch, ws, t)
            assert len(got) == len(want)
            assert all(a is b or (type(a) is int and a == b) for a, b in zip(got, want))
            assert p.memo[2]() is ws
    assert len(sp.tail) == len(sp.cx) + len(L._GROUP.options(0))
