"""Launch groups (several kernels, one native call): the C entry's lookup-before-launch
contract and the Python object's guards, without a GPU (empty grids launch nothing)."""

from __future__ import annotations

import ctypes.util

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from helpers import HotGroup  # noqa: E402

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


def _add_lora_case():
    """The launch module, qkv-like weights, a 5-token batch, T and add_lora's two-pass plan
    (skips without the fast launcher)."""
    import lora_dispatch as ld
    from lora_dispatch.kernels.triton import launch as L

    if L._GROUP is None:
        pytest.skip("no fast launcher")
    w = ld.LoRAWeights(3, 64, (32, 16, 16), 8, dtype=torch.float16)
    batch = ld.LoRABatch.from_token_adapters([0, 1, -1, 2, 0])
    return L, w, batch, 5, L.plan_for("add", w, 5, "two_pass")


@needs_native
def test_launch_group_checks_global_state_once(monkeypatch) -> None:
    """Past its first kernel a group checks only each kernel's own guards (pre-run hooks, its
    ``debug`` flag) where every kernel was built against the same global state objects; a
    launch hook or a global knob change still stops the whole group, and a kernel built
    against other snapshots keeps its full guard."""
    backend = reference_backend("cuda")
    a = fast_launch(k_first).build_for_tests(backend, lean=True, native=True)
    b = fast_launch(k_second).build_for_tests(backend, lean=True, native=True)
    g = LaunchGroup(a, b)
    assert g.native
    na, nb = a._fl_ns, b._fl_ns
    readies = g._state[1]
    assert readies == (na["_fl_ready"], nb["_fl_ready_local"])
    assert all(r() for r in readies) and g._ready()[0] is not None
    k_second.pre_run_hooks.append(lambda *args, **kwargs: None)
    try:
        assert not readies[1]() and g._ready()[0] is None
    finally:
        k_second.pre_run_hooks.clear()
    if tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 5):
        from triton import knobs

        chain = knobs.runtime.launch_enter_hook
        chain.calls.append(lambda *args: None)  # a launch hook: global, read by kernel 0
        try:
            assert readies[1]() and g._ready()[0] is None
        finally:
            chain.calls.pop()
    monkeypatch.setitem(nb, "_fl_global_snap", (object(),) + nb["_fl_global_snap"][1:])
    g._invalidate()
    assert g._refresh()[1] == (na["_fl_ready"], nb["_fl_ready"])


def test_add_lora_group_slots_follow_the_launch_argument_order() -> None:
    """The memoized launch-group slots of add_lora are exactly shrink args + constexprs +
    options, then the expand's: the order the separate launches use (CPU tensors: only the
    host-side assembly is checked). A new workspace or batch rebuilds the memo."""
    L, w, batch, t, p = _add_lora_case()
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


def test_add_lora_bound_slots_leave_out_only_the_per_call_slots() -> None:
    """What add_lora binds is its memoized group slots with None at exactly ``x``,
    ``base_out`` and their strides; the values it then passes fill those positions back to
    the full slots."""
    L, w, batch, t, p = _add_lora_case()
    ws = torch.empty(4096)
    x = torch.randn(t, 128).half()[:, ::2]
    out = torch.randn(t, 3 * w.total_out)[:, 1 : 1 + w.total_out]
    full = L._group_slots(p, out, x, w, batch, ws, t)
    slots, varying = L._bound_slots(p, False)
    assert len(slots) == len(full) and list(varying) == sorted(set(varying))
    per_call = (x, *x.stride(), out, *out.stride())
    assert len(varying) == len(per_call)
    for i, v in zip(varying, per_call):
        assert slots[i] is None and (full[i] is v or full[i] == v)
    for i, (a, b) in enumerate(zip(slots, full)):
        if i not in varying:
            assert a is b


class _FakeGroup:
    def __init__(self, bound, results):
        self.bound, self.results, self.binds, self.calls = bound, list(results), 0, []

    def bind(self, slots, varying):
        self.binds += 1
        return self.bound

    def launch_bound(self, bound, grids, values):
        self.calls.append((bound, grids, values))
        return self.results.pop(0)


def test_add_lora_binds_once_and_again_after_a_failed_launch() -> None:
    """The binding is made on first use and kept while it launches; a launch that does not
    happen (a variant not compiled yet, rebuilt tables) drops it so the next call binds
    again; a group whose fixed slots cannot be bound is not asked again."""
    import lora_dispatch as ld
    from lora_dispatch.kernels.triton import launch as L

    w = ld.LoRAWeights(3, 64, (32, 16, 16), 8, dtype=torch.float16)
    batch = ld.LoRABatch.from_token_adapters([0, 1, -1, 2, 0])
    p = L.plan_for("add", w, 5, "two_pass")
    L._memoize(p, w, batch, torch.empty(8), ((), (), (), ()))
    g = _FakeGroup("B", [True, True, False, True])
    vals = (1, 2)
    assert L._launch_bound(g, p, ((1,), (2,)), vals, False) and g.binds == 1
    assert L._launch_bound(g, p, ((1,), (2,)), vals, False) and g.binds == 1
    assert not L._launch_bound(g, p, ((1,), (2,)), vals, False) and p.memo[4] is None
    assert L._launch_bound(g, p, ((1,), (2,)), vals, False) and g.binds == 2
    assert [c[0] for c in g.calls] == ["B"] * 4 and g.calls[0][2] is vals
    none = _FakeGroup(None, [])
    p.memo[4] = None
    assert not L._launch_bound(none, p, ((1,), (2,)), vals, False)
    assert not L._launch_bound(none, p, ((1,), (2,)), vals, False)
    assert none.binds == 1 and not none.calls


# ---------------------------------------------------------------- bound groups
# _tables(): ta keys (x, n, BLOCK, opt), tb keys (y, x, m, stride, FLAG, opt); in the
# concatenated slots ta's are 0-3 and tb's 4-9.

def _bind(mod, ta, tb, sa, sb, varying):
    slots = [*sa, *sb]
    for i in varying:
        slots[i] = None  # placeholders: never keyed
    return mod.fl_bind((ta, tb), tuple(varying), 0, *slots)


def _split(sa, sb, varying, values):
    slots = [*sa, *sb]
    for i, v in zip(varying, values):
        slots[i] = v
    return tuple(slots[:4]), tuple(slots[4:])


@needs_native
def test_bound_key_equals_the_full_key() -> None:
    """``fl_bound_key`` (the fixed slots keyed at bind time, the varying ones per call) gives
    the bytes ``fl_key`` gives for the full slots, whatever the varying values: another
    dtype, a view whose address changes the 16-byte alignment class, ints 16 / 17 / 1 /
    beyond 32 bits, None, a float."""
    mod, ta, tb, sa, sb = _tables()
    x = sa[0]
    xs = (x, x[1:], x[8:], x.to(torch.bfloat16), torch.empty(8, dtype=torch.int32))
    ms = (64, 16, 17, 1, 2**40, None, 0.5)
    varying = (0, 5, 6)  # ta's x; tb's x and m (tb's y stays fixed)
    b = _bind(mod, ta, tb, sa, sb, varying)
    assert b is not None
    seen = set()
    for xa in xs:
        for xb in xs[:2]:
            for m in ms:
                va, vb = _split(sa, sb, varying, (xa, xb, m))
                ka, kb = mod.fl_bound_key(b, 0, 0, xa, xb, m), mod.fl_bound_key(b, 1, 0, xa,
                                                                                  xb, m)
                assert ka == mod.fl_key(ta, 0, *va) and ka is not None
                assert kb == mod.fl_key(tb, 0, *vb) and kb is not None
                seen.add((ka, kb))
    # the values reach the key: x and x[8:] (16 bytes on) share a class, as do 64 and 16
    assert len(seen) == 4 * 2 * 6
    # every slot varying, and none
    for varying in (tuple(range(10)), ()):
        b = _bind(mod, ta, tb, sa, sb, varying)
        vals = tuple(s for i, s in enumerate((*sa, *sb)) if i in varying)
        assert mod.fl_bound_key(b, 0, 0, *vals) == mod.fl_key(ta, 0, *sa)
        assert mod.fl_bound_key(b, 1, 0, *vals) == mod.fl_key(tb, 0, *sb)
    # another device: no key; a value outside the keyer: no key
    b = _bind(mod, ta, tb, sa, sb, (6,))
    assert mod.fl_bound_key(b, 1, 1, 64) is None
    assert mod.fl_bound_key(b, 1, 0, [64]) is None
    assert mod.fl_bound_key(b, 0, 0, 64) == mod.fl_key(ta, 0, *sa)


@needs_native
def test_launch_bound_hits_what_fl_register_stored() -> None:
    """The hash of a bound launch (the chain resumed at the first varying slot) is the one
    ``fl_register`` stored: every variant registered from full slots is hit, wherever the
    varying slots sit (first, middle, last, all, none of a launcher's)."""
    mod, ta, tb, sa, sb = _tables()
    x16 = sa[0][8:]  # another address, same alignment class: the same variant
    x17 = sa[0][1:]  # misaligned: another variant
    ptr, i32, skip = native.T_PTR, native.T_I32, native.T_SKIP
    for xb, m in ((x17, 64), (x17, 17), (sa[0], 17)):  # (sa[0], 64): _tables
        vb = (sb[0], xb, m, *sb[3:])
        assert mod.fl_register(tb, 0, mod.fl_key(tb, 0, *vb), 3, 256, 1, 0, 0, 0, 0,
                               bytes([ptr, ptr, i32, i32, skip]), object(), vb)
    va = (x17, *sa[1:])
    assert mod.fl_register(ta, 0, mod.fl_key(ta, 0, *va), 4, 128, 1, 0, 0, 0, 0,
                           bytes([ptr, i32, skip]), object(), va)
    empty = ((0,), (0,))
    cases = [
        ((), ()),
        ((0,), (x16,)),
        ((0,), (x17,)),
        ((6,), (17,)),
        ((9,), (8,)),
        ((0, 5, 6), (x17, x17, 16)),
        ((0, 5, 6, 9), (x16, sa[0], 64, 8)),
        (tuple(range(10)), (*sa, *sb)),
    ]
    hits = 0
    for varying, values in cases:
        b = _bind(mod, ta, tb, sa, sb, varying)
        assert mod.fl_launch_bound(b, (ta, tb), empty, 0, 0, *values) is None, varying
        hits += 1
        assert mod.fl_info(ta)[0] == hits and mod.fl_info(tb)[0] == hits
    # one launcher alone, fixed slots only
    b = mod.fl_bind((tb,), (), 0, *sb)
    assert mod.fl_launch_bound(b, (tb,), ((0, 1, 1),), 0, 0) is None
    assert mod.fl_info(tb)[0] == hits + 1


@needs_native
def test_launch_bound_launches_nothing_unless_every_call_hits() -> None:
    mod, ta, tb, sa, sb = _tables()
    empty = ((0,), (0,))
    b = _bind(mod, ta, tb, sa, sb, (0, 6))
    x = sa[0]
    assert mod.fl_launch_bound(b, (ta, tb), empty, 0, 0, x, 64) is None
    assert mod.fl_info(ta)[0] == 1 and mod.fl_info(tb)[0] == 1
    misses = [
        ((ta, tb), empty, 0, (x, 65)),  # the second call misses: not even the first launches
        ((ta, tb), empty, 0, (x[1:], 64)),  # the first misses (alignment class)
        ((ta, tb), empty, 0, (x.to(torch.bfloat16), 64)),  # dtype
        ((ta, tb), empty, 0, ([x], 64)),  # a value outside the keyer
        ((ta, tb), empty, 1, (x, 64)),  # another device
        ((tb, ta), empty, 0, (x, 64)),  # other launchers
        ((ta,), ((0,),), 0, (x, 64)),
        ((ta, tb, tb), ((0,),) * 3, 0, (x, 64)),
        ((ta, _table(mod, 5, [native.C_GENERIC_SA] * 4 + [native.C_CONSTEXPR,
                                                           native.C_OPTION])),
         empty, 0, (x, 64)),  # an equal but other table
        ((ta, tb), ((0,), [0]), 0, (x, 64)),  # a grid the C side does not take
    ]
    for launchers, grids, dev, values in misses:
        assert mod.fl_launch_bound(b, launchers, grids, 0, dev, *values) is NotImplemented
        assert mod.fl_time_bound(3, b, launchers, grids, 0, dev, *values) is None
    assert mod.fl_info(ta)[0] == 1 and mod.fl_info(tb)[0] == 1
    prep, launch = mod.fl_time_bound(50, b, (ta, tb), empty, 0, 0, x, 64)
    assert prep > 0 and launch >= 0
    assert mod.fl_info(ta)[0] == 51 and mod.fl_info(tb)[0] == 51


@needs_native
def test_bind_returns_none_for_a_fixed_slot_outside_the_keyer() -> None:
    mod, ta, tb, sa, sb = _tables()
    odd = object()
    for i, v in ((0, odd), (2, 1.5), (5, [sa[0]]), (9, "8")):  # param, constexpr, option
        slots = [*sa, *sb]
        slots[i] = v
        assert mod.fl_bind((ta, tb), (), 0, *slots) is None
        assert mod.fl_bind((ta, tb), (i,), 0, *slots) is not None  # a placeholder: not keyed
    slots = [*sa, *sb]
    slots[2] = 2**70  # an int constexpr beyond 64 bits
    assert mod.fl_bind((ta, tb), (), 0, *slots) is None


@needs_native
def test_bound_keeps_the_fixed_objects_and_launchers_alive() -> None:
    """The Bound holds strong references to its fixed slots (a descriptor's map and a str
    constexpr's comparison read them at launch) and to its launchers, none to the
    placeholders; it takes part in garbage collection."""
    import gc
    import sys
    import weakref

    mod, ta, tb, sa, sb = _tables()
    y = torch.empty(64, dtype=torch.float32)
    holder = torch.empty(4)
    ry, rh = weakref.ref(y), weakref.ref(holder)
    rc_ta, rc_y = sys.getrefcount(ta), sys.getrefcount(y)
    b = mod.fl_bind((ta, tb), (0,), 0, holder, *sa[1:], y, *sb[1:])
    assert sys.getrefcount(ta) == rc_ta + 1 and sys.getrefcount(y) == rc_y + 1
    del y, holder
    assert ry() is not None and rh() is None
    assert mod.fl_launch_bound(b, (ta, tb), ((0,), (0,)), 0, 0, sa[0]) is None
    del b
    assert ry() is None and sys.getrefcount(ta) == rc_ta
    # a cycle through a fixed slot is collected
    z = torch.empty(64, dtype=torch.float32)
    rz = weakref.ref(z)
    b = mod.fl_bind((ta, tb), (0,), 0, None, *sa[1:], z, *sb[1:])
    assert gc.is_tracked(b)
    z.bound = b
    rb = sys.getrefcount(b)
    del z, b
    assert rz() is not None and rb > 1
    gc.collect()
    assert rz() is None


@needs_native
def test_bound_str_constexpr_is_compared_by_value() -> None:
    mod = native.load()
    t = _table(mod, 2, [native.C_GENERIC_SA, native.C_CONSTEXPR])
    x = torch.empty(8)
    mode = "".join(["ro", "w"])  # equal to "row", another object
    assert mode is not "row"  # noqa: F632
    slots = (x, mode)
    assert mod.fl_register(t, 0, mod.fl_key(t, 0, *slots), 1, 32, 1, 0, 0, 0, 0,
                           bytes([native.T_PTR, native.T_SKIP]), object(), slots)
    b = mod.fl_bind((t,), (0,), 0, None, "row")
    assert mod.fl_bound_key(b, 0, 0, x) == mod.fl_key(t, 0, *slots)
    assert mod.fl_launch_bound(b, (t,), ((0,),), 0, 0, x) is None
    b = mod.fl_bind((t,), (0,), 0, None, "col")
    assert mod.fl_launch_bound(b, (t,), ((0,),), 0, 0, x) is NotImplemented
    b = mod.fl_bind((t,), (1,), 0, x, None)
    assert mod.fl_launch_bound(b, (t,), ((0,),), 0, 0, "row") is None
    assert mod.fl_info(t)[0] == 2


@needs_native
def test_bound_rejects_bad_arguments() -> None:
    mod, ta, tb, sa, sb = _tables()
    empty = ((0,), (0,))
    with pytest.raises(TypeError, match="expected 13 arguments, got 12"):
        mod.fl_bind((ta, tb), (), 0, *sa, *sb[:-1])
    with pytest.raises(TypeError, match="launchers: tuple, varying: tuple"):
        mod.fl_bind((ta, tb), [0], 0, *sa, *sb)
    with pytest.raises(TypeError, match="native Launchers"):
        mod.fl_bind((ta, object()), (), 0, *sa, *sb)
    with pytest.raises(ValueError, match="1 to 4 launchers"):
        mod.fl_bind((), (), 0)
    for bad in ((1, 0), (0, 0), (10,), (-1,)):
        with pytest.raises(ValueError, match="sorted, distinct slot indices below 10"):
            mod.fl_bind((ta, tb), bad, 0, *sa, *sb)
    with pytest.raises(ValueError, match="11 indices for 10 slots"):
        mod.fl_bind((ta, tb), tuple(range(11)), 0, *sa, *sb)
    with pytest.raises(TypeError, match="integer"):
        mod.fl_bind((ta, tb), ("0",), 0, *sa, *sb)
    b = _bind(mod, ta, tb, sa, sb, (0, 6))
    with pytest.raises(TypeError, match="expected 7 arguments, got 6"):
        mod.fl_launch_bound(b, (ta, tb), empty, 0, 0, sa[0])
    with pytest.raises(TypeError, match="expected 7 arguments, got 8"):
        mod.fl_launch_bound(b, (ta, tb), empty, 0, 0, sa[0], 64, 64)
    with pytest.raises(TypeError, match="expected 7 arguments, got 6"):  # as fl_time_group
        mod.fl_time_bound(5, b, (ta, tb), empty, 0, 0, sa[0])
    with pytest.raises(TypeError, match="expected 5 arguments, got 4"):
        mod.fl_bound_key(b, 0, 0, sa[0])
    with pytest.raises(TypeError, match=r"fl_launch_bound\(bound"):
        mod.fl_launch_bound(ta, (ta, tb), empty, 0, 0, sa[0], 64)
    with pytest.raises(TypeError, match=r"fl_launch_bound\(bound"):
        mod.fl_launch_bound(b, [ta, tb], empty, 0, 0, sa[0], 64)
    with pytest.raises(ValueError, match="one grid per launcher"):
        mod.fl_launch_bound(b, (ta, tb), ((0,),), 0, 0, sa[0], 64)
    with pytest.raises(ValueError, match="reps"):
        mod.fl_time_bound(0, b, (ta, tb), empty, 0, 0, sa[0], 64)
    with pytest.raises(IndexError, match="launcher index"):
        mod.fl_bound_key(b, 2, 0, sa[0], 64)
    with pytest.raises(TypeError, match=r"fl_bound_key\(bound"):
        mod.fl_bound_key(ta, 0, 0, sa[0], 64)


@needs_native
@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None,
                    reason="a CUDA driver is installed: a real launch would run")
def test_launch_bound_reaches_the_driver_only_when_every_call_hits() -> None:
    mod, ta, tb, sa, sb = _tables()
    b = _bind(mod, ta, tb, sa, sb, (0, 6))
    assert mod.fl_launch_bound(b, (ta, tb), ((1,), (1,)), 0, 0, sa[0], 65) is NotImplemented
    with pytest.raises(RuntimeError, match="libcuda"):
        mod.fl_launch_bound(b, (ta, tb), ((1,), (1,)), 0, 0, sa[0], 64)


def test_launch_group_bind_without_native_tables() -> None:
    g = LaunchGroup(fast_launch(k_first), fast_launch(k_second))
    assert g.bind((), ()) is None
    assert g.launch_bound(None, ((1,), (1,)), ()) is False
    assert g.launch_bound(object(), ((1,), (1,)), ()) is False  # not native: never reaches C
    assert g.launches == 0


def _native_group():
    """Two native-tier launchers of the test kernels in a group, its slots (``x`` and ``m``
    varying), the fixed slots to bind, and ``register(*i)``: store kernel ``i``'s variant."""
    backend = reference_backend("cuda")
    a = fast_launch(k_first).build_for_tests(backend, lean=True, native=True)
    b = fast_launch(k_second).build_for_tests(backend, lean=True, native=True)
    g = LaunchGroup(a, b)
    x = torch.empty(64, dtype=torch.float16)
    y = torch.empty(64, dtype=torch.float32)
    slots = (x, 4096, 128, *g.options(0, num_warps=4), y, x, 64, 4096, True,
             *g.options(1, num_warps=4))
    varying = (0, 8)  # x of the first kernel, m of the second
    held = (None, *slots[1:8], None, *slots[9:])

    def register(*which: int) -> None:
        ptr, i32, skip = native.T_PTR, native.T_I32, native.T_SKIP
        tables = ((a._fl_ns, slots[:6], bytes([ptr, i32, skip])),
                  (b._fl_ns, slots[6:], bytes([ptr, ptr, i32, i32, skip])))
        for ns, own, types in (tables[i] for i in which):
            key = ns["_fl_natkey"](ns["_fl_nat"], 0, *own)
            assert ns["_fl_natreg"](ns["_fl_nat"], 0, key, 1, 128, 1, 0, 0, 0, 0, types,
                                    object(), own)

    return backend, a, b, g, x, slots, varying, held, register


@needs_native
def test_launch_group_bind_and_launch_bound_guards(monkeypatch) -> None:
    backend, a, b, g, x, slots, varying, held, register = _native_group()
    empty = ((0,), (0,))
    bound = g.bind(held, varying)
    assert bound is not None
    assert g.launch_bound(bound, empty, (x, 64)) is False  # no variant compiled yet
    register(0, 1)
    assert g.launch_bound(bound, empty, (x, 64)) is True and g.launches == 1
    assert g.launch_bound(bound, empty, (x, 65)) is False  # a miss
    assert g(empty, slots) is True and g.launches == 2  # the unbound path agrees
    with pytest.raises(TypeError, match="expected 7 arguments, got 6"):
        g.launch_bound(bound, empty, (x,))
    with pytest.raises(TypeError, match="expected 17 arguments, got 18"):
        g.bind((*held, None), varying)
    k_second.pre_run_hooks.append(lambda *args, **kwargs: None)
    try:
        assert g.launch_bound(bound, empty, (x, 64)) is False  # a guard of one kernel fails
    finally:
        k_second.pre_run_hooks.clear()
    assert g.launch_bound(bound, empty, (x, 64)) is True and g.launches == 3
    a._fl_set_plain(True)
    try:
        assert g.launch_bound(bound, empty, (x, 64)) is False
        assert g.bind(held, varying) is None
    finally:
        a._fl_set_plain(False)
    assert g.launch_bound(bound, empty, (x, 64)) is True and g.launches == 4
    # another current device than at bind time (multi-device launchers read it per call)
    dev = [0]
    for ns in (a._fl_ns, b._fl_ns):
        monkeypatch.delitem(ns, "_fl_cache")
        monkeypatch.setitem(ns, "_fl_getdev", lambda: dev[0])
    g._invalidate()
    assert g.launch_bound(bound, empty, (x, 64)) is True
    dev[0] = 1
    assert g.launch_bound(bound, empty, (x, 64)) is False and g.launches == 5
    monkeypatch.undo()
    g._invalidate()
    # rebuilt launchers (new tables): the old Bound never launches again, a new one does
    a._fl_reset()
    assert g.bind(held, varying) is None and g.launch_bound(bound, empty, (x, 64)) is False
    a.build_for_tests(backend, lean=True, native=True)
    register(0)
    assert g.launch_bound(bound, empty, (x, 64)) is False
    bound = g.bind(held, varying)
    assert g.launch_bound(bound, empty, (x, 64)) is True and g.launches == 6
    # a fixed slot outside the C keyer: no Bound
    assert g.bind((None, 4096, 1.5, *slots[3:]), varying) is None


@needs_native
def test_launch_group_hot_pieces_pass_exactly_when_launch_bound_does(monkeypatch) -> None:
    """``LaunchGroup.hot``'s ``ready()`` and native call agree with ``launch_bound`` through
    hooks, a plain launcher, another current device and rebuilt tables; after any of those
    the pieces stay stale (fresh ones are taken again)."""
    backend, a, b, g, x, slots, varying, held, register = _native_group()
    empty = ((0,), (0,))
    assert g.hot(None) is None
    register(0, 1)
    bound = g.bind(held, varying)
    ready, launch, tables, stream, dev = g.hot(bound)

    def via_hot(m: int = 64) -> bool:
        return ready() and launch(bound, tables, empty, stream(dev), dev, x, m) is None

    assert via_hot() and g.launch_bound(bound, empty, (x, 64))
    assert ready() and not via_hot(65) and not g.launch_bound(bound, empty, (x, 65))
    k_second.pre_run_hooks.append(lambda *args, **kwargs: None)
    try:
        assert not ready() and not g.launch_bound(bound, empty, (x, 64))
    finally:
        k_second.pre_run_hooks.clear()
    assert via_hot()
    a._fl_set_plain(True)
    try:
        assert not ready() and g.hot(bound) is None
    finally:
        a._fl_set_plain(False)
    assert not ready()  # the group was refreshed: these pieces are stale
    assert g.launch_bound(bound, empty, (x, 64))
    ready, launch, tables, stream, dev = g.hot(bound)
    assert via_hot()
    cur = [0]
    for ns in (a._fl_ns, b._fl_ns):
        monkeypatch.delitem(ns, "_fl_cache")
        monkeypatch.setitem(ns, "_fl_getdev", lambda: cur[0])
    g._invalidate()
    ready, launch, tables, stream, dev = g.hot(bound)
    assert dev == 0 and via_hot()
    cur[0] = 1
    assert not ready() and not g.launch_bound(bound, empty, (x, 64))
    cur[0] = 0
    assert via_hot()
    monkeypatch.undo()
    g._invalidate()
    ready, launch, tables, stream, dev = g.hot(bound)
    a._fl_reset()
    assert not ready()
    a.build_for_tests(backend, lean=True, native=True)
    register(0)
    assert not ready() and not g.launch_bound(bound, empty, (x, 64))
    pieces = g.hot(bound)
    assert pieces is not None and pieces[1](bound, pieces[2], empty, 0, 0, x, 64) is \
        NotImplemented  # a Bound of the old tables never launches


@needs_native
def test_add_lora_hot_path_launches_only_under_the_armed_conditions(monkeypatch) -> None:
    """add_lora's armed per-call path passes the bound launch its per-call slots and
    launches nothing (falls back) on another weights object or version (a load since),
    batch, group, thread, stream or workspace generation, under capture, or when the group's
    guard fails; a declined native call drops the path and the binding. Armed for the plan
    of the loaded ranks, it sits on the plan add_lora looks up and launches the other."""
    import threading

    L, w, batch, t, p = _add_lora_case()
    g = HotGroup()
    monkeypatch.setattr(L, "_GROUP", g)
    monkeypatch.setattr(L, "_raw_stream", lambda dev: g.stream)
    capturing = [False]
    monkeypatch.setattr(L, "_capturing", lambda: capturing[0])
    monkeypatch.setitem(L._plans(w), ("add", t, None, None), p)
    ws = torch.empty(4096)
    x = torch.randn(t, 128).half()[:, ::2]
    out = torch.randn(t, 3 * w.total_out)[:, 1 : 1 + w.total_out]
    L._memoize(p, w, batch, ws, ((), (), (), ()))
    L._arm_hot(p, g, x, ws, w, p)
    assert p.memo[5] is None  # not bound yet
    p.memo[4] = "B"
    L._arm_hot(p, g, x, torch.empty(8), w, p)
    assert p.memo[5] is None  # not the memoized workspace
    L._arm_hot(p, g, x, ws, w, p)
    hot = p.memo[5]
    L.add_lora(out, x, w, batch)
    grids = (p.shrink.grid, p.expand.grid)
    assert g.calls == [("B", "tables", grids, 7, -1, x, *x.stride(), out, *out.stride())]
    assert g.launches == 1
    w2 = type(w)(3, 64, (32, 16, 16), 8, dtype=torch.float16)
    b2 = type(batch).from_token_adapters([0, 1, -1, 2, 0])
    assert not hot(out, x, w2, batch) and not hot(out, x, w, b2)
    monkeypatch.setattr(L, "_GROUP", HotGroup())
    assert not hot(out, x, w, batch)
    monkeypatch.setattr(L, "_GROUP", g)
    capturing[0] = True
    assert not hot(out, x, w, batch)
    capturing[0] = False
    g.stream = 8
    assert not hot(out, x, w, batch)
    g.stream = 7
    g.ok = False
    assert not hot(out, x, w, batch)
    g.ok = True
    seen = []
    th = threading.Thread(target=lambda: seen.append(hot(out, x, w, batch)))
    th.start()
    th.join()
    assert seen == [False] and len(g.calls) == 1
    assert hot(out, x, w, batch) and len(g.calls) == 2
    w.version += 1
    assert not hot(out, x, w, batch) and len(g.calls) == 2  # weights loaded since arming
    w.version -= 1
    L._WS_GEN[0] += 1
    assert not hot(out, x, w, batch) and len(g.calls) == 2
    L._arm_hot(p, g, x, ws, w, p)
    g.result = NotImplemented
    assert not p.memo[5](out, x, w, batch)
    assert p.memo[4] is None and p.memo[5] is None and g.launches == 2
    alt = p._replace(alt=p, memo=[*p.memo[:4], "B", None])
    L._arm_hot(alt, g, x, ws, w, alt)
    assert alt.memo[5] is None  # a plan with a Gluon alternative picks per call
    cap = p._replace(memo=[None] * 6)  # stands in for the plan of the loaded ranks
    L._memoize(cap, w, batch, ws, ((), (), (), ()))
    cap.memo[4] = "C"
    g.result = None
    L._arm_hot(cap, g, x, ws, w, p)
    assert cap.memo[5] is None and p.memo[5] is not None
    assert p.memo[5](out, x, w, batch)
    assert g.calls[-1][:3] == ("C", "tables", (cap.shrink.grid, cap.expand.grid))
    g.result = NotImplemented
    assert not p.memo[5](out, x, w, batch)
    assert cap.memo[4] is None and p.memo[5] is None


@needs_native
def test_public_add_lora_takes_the_native_path_exactly_where_validation_passes(
        monkeypatch) -> None:
    """``ops.add_lora`` reaches the armed native path (``launchers/hot.c``) through
    ``w._fl_hot[T]`` only where ``ops._fast_ok`` passes the call and ``w``'s backend selection
    is the arming backend's at the registry's generation; every other call goes to the
    Python path, which raises the public errors or launches through the backend."""
    import types

    import lora_dispatch as ld
    from lora_dispatch import ops
    from lora_dispatch.devices import registry

    L, w, batch, t, p = _add_lora_case()
    g = HotGroup()
    monkeypatch.setattr(L, "_GROUP", g)
    monkeypatch.setattr(L, "_raw_stream", lambda dev: g.stream)
    monkeypatch.setattr(L, "_capturing", lambda: False)
    monkeypatch.setitem(L._plans(w), ("add", t, None, None), p)
    monkeypatch.setattr(ops, "_hot_add", None)
    fake = types.SimpleNamespace(impl=types.SimpleNamespace(add_lora=L.add_lora))
    w._selection = (registry.generation, fake)
    ws = torch.empty(4096)
    x = torch.randn(t, 128).half()[:, ::2]
    out = torch.randn(t, 3 * w.total_out)[:, 1 : 1 + w.total_out]
    L._memoize(p, w, batch, ws, ((), (), (), ()))
    p.memo[4] = "B"
    L._arm_hot(p, g, x, ws, w, p)
    hot_add = ops._hot_add
    assert hot_add is not None and w._fl_hot[t] is p.memo

    checked = []
    fast_ok = ops._fast_ok
    monkeypatch.setattr(ops, "_fast_ok", lambda *a: checked.append(1) or fast_ok(*a))
    ld.add_lora(out, x, w, batch)
    assert not checked and len(g.calls) == 1  # the public op's checks ran in C
    assert g.calls[0][5:] == (x, *x.stride(), out, *out.stride())

    def with_attr(obj, name, value):
        old = getattr(obj, name)
        setattr(obj, name, value)
        try:
            return hot_add(out, x, w, batch), fast_ok(out, x, w, batch)
        finally:
            setattr(obj, name, old)

    calls = {
        "valid": (out, x),
        "x columns": (out, torch.randn(t, 63).half()),
        "x dtype": (out, x.float()),
        "x 3-d": (out, x[None]),
        "x subclass": (out, torch.nn.Parameter(x, requires_grad=False)),
        "x not a tensor": (out, x.tolist()),
        "x on meta": (out, x.to("meta")),
        "out rows": (out[:-1], x),
        "out columns": (out[:, :-1], x),
        "out fp64": (out.double(), x),
        "out int": (out.int(), x),
        "out fp32": (out.float(), x),
        "out bf16": (out.bfloat16(), x),
        "out on meta": (out.to("meta"), x),
    }
    for what, (o, xv) in calls.items():
        n = len(g.calls)
        took = hot_add(o, xv, w, batch)
        assert took == fast_ok(o, xv, w, batch), what
        assert len(g.calls) == n + took, what
    assert with_attr(batch, "max_slot", w.num_slots) == (False, False)
    assert with_attr(batch, "max_slot", None) == (True, True)
    assert with_attr(batch, "num_tokens", t + 1) == (False, False)
    assert with_attr(batch, "capacity", t - 1) == (False, False)
    with pytest.raises(ValueError, match="x"):
        ld.add_lora(out, torch.randn(t, 63).half(), w, batch)
    # another selection, or the registry's next generation: the Python path decides
    assert with_attr(w, "_selection", (registry.generation, fake)) == (False, True)
    monkeypatch.setattr(registry, "generation", registry.generation + 1)
    assert not hot_add(out, x, w, batch)
    monkeypatch.setattr(registry, "generation", registry.generation - 1)
    n = len(g.calls)
    assert hot_add(out, x, w, batch) and len(g.calls) == n + 1
    g.result = NotImplemented  # a stale binding: dropped, and the public path with it
    assert not hot_add(out, x, w, batch) and p.memo[5] is None
    assert not hot_add(out, x, w, batch) and len(g.calls) == n + 2


def _pub_case(monkeypatch):
    """``_add_lora_case`` with the public shrink's and expand's groups scripted
    (:class:`HotGroup`), no public entries armed yet, and ``w`` selecting this backend."""
    import types

    from lora_dispatch import ops
    from lora_dispatch.devices import registry

    L, w, batch, t, _ = _add_lora_case()
    g = HotGroup()
    for name in ("_ZGROUP", "_SGROUP", "_EGROUP"):
        monkeypatch.setattr(L, name, g)
    monkeypatch.setattr(L, "_raw_stream", lambda dev: g.stream)
    monkeypatch.setattr(L, "_capturing", lambda: False)
    for name in L._HOT_ENTRIES:
        monkeypatch.setattr(ops, name, None)
    impl = types.SimpleNamespace(add_lora=L.add_lora, shrink=L.shrink, expand=L.expand)
    w._selection = (registry.generation, types.SimpleNamespace(impl=impl))
    return L, ops, w, batch, t, g


def _arm_pub(L, w, batch, g, op, name, x, grids, t, need_ms=False):
    import weakref

    em = [None]
    layout = {"_ZGROUP": L._Z_PUB_LAYOUT, "_SGROUP": L._S_PUB_LAYOUT,
              "_EGROUP": L._E_PUB_LAYOUT}[name]
    L._install_hot(em, w, weakref.ref(batch), weakref.ref(w), name, g, "B", grids, x, op=op,
                   slot=0, t=t, layout=layout, need_ms=need_ms)
    return em


def _valid(fn, *args) -> bool:
    try:
        fn(*args)
    except (TypeError, ValueError):
        return False
    return True


@needs_native
def test_public_shrink_takes_the_native_path_exactly_where_validation_passes(
        monkeypatch) -> None:
    """``ops.lora_shrink`` reaches its armed native path (``w._fl_hot_s[T]``) only where the
    public validation passes (and ``batch.max_slot`` is known where the plan writes its own
    zeros); the path allocates ``y`` and passes it to both kernels of the bound group, and
    returns it. A stale binding drops the path."""
    import lora_dispatch as ld

    L, ops, w, batch, t, g = _pub_case(monkeypatch)
    x = torch.randn(t, 128).half()[:, ::2]
    grids = ((3,), (2, 2))
    em = _arm_pub(L, w, batch, g, L.OP_SHRINK, "_ZGROUP", x, grids, t)
    assert w._fl_hot_s[t] is em and ops._hot_shrink is not None
    y = ld.lora_shrink(x, w, batch)
    assert y.shape == (w.num_slices, t, w.max_rank) and y.dtype == torch.float32
    assert g.calls == [("B", "tables", grids, 7, -1, y, x, y, *x.stride())]
    assert g.launches == 1 and em[0].calls == 1
    hot = ops._hot_shrink
    calls = {
        "valid": x,
        "contiguous": x.contiguous(),
        "x columns": torch.randn(t, 63).half(),
        "x rows": x[:-1],
        "x dtype": x.float(),
        "x 3-d": x[None],
        "x subclass": torch.nn.Parameter(x, requires_grad=False),
        "x not a tensor": x.tolist(),
        "x on meta": x.to("meta"),
    }
    for what, xv in calls.items():
        n = len(g.calls)
        took = hot(xv, w, batch) is not False
        assert took == (what in ("valid", "contiguous")), what
        assert took <= _valid(ops._validate, xv, w, batch, False), what
        assert len(g.calls) == n + took, what
    for attr, value, took in (("max_slot", w.num_slots, False), ("max_slot", None, True),
                              ("num_tokens", t + 1, False), ("capacity", t - 1, False)):
        old = getattr(batch, attr)
        setattr(batch, attr, value)
        try:
            assert (hot(x, w, batch) is not False) == took, attr
            assert took <= _valid(ops._validate, x, w, batch, False), attr
        finally:
            setattr(batch, attr, old)
    with pytest.raises(ValueError, match="in_features"):
        ld.lora_shrink(torch.randn(t, 63).half(), w, batch)
    em = _arm_pub(L, w, batch, g, L.OP_SHRINK, "_SGROUP", x, (grids[1],), t, need_ms=True)
    y = hot(x, w, batch)
    assert g.calls[-1] == ("B", "tables", (grids[1],), 7, -1, x, y, *x.stride())
    batch.max_slot, old = None, batch.max_slot
    try:
        assert hot(x, w, batch) is False  # the plan writing its own zeros needs the slots
    finally:
        batch.max_slot = old
    g.result = NotImplemented
    assert hot(x, w, batch) is False and em[0] is None


@needs_native
def test_public_expand_takes_the_native_path_only_where_validation_passes(
        monkeypatch) -> None:
    """``ops.lora_expand`` reaches its armed native path (``w._fl_hot_e[T]``, T: ``base_out``'s
    rows) only where the public validation passes and ``y`` has the armed dtype; it passes
    ``y``, ``base_out`` and their strides in the bound group's slot order."""
    import lora_dispatch as ld

    L, ops, w, batch, t, g = _pub_case(monkeypatch)
    y = torch.randn(w.num_slices, t, 2 * w.max_rank)[:, :, ::2]
    out = torch.randn(t, 3 * w.total_out)[:, 1 : 1 + w.total_out]
    em = _arm_pub(L, w, batch, g, L.OP_EXPAND, "_EGROUP", y, ((4,),), t)
    assert w._fl_hot_e[t] is em
    assert ld.lora_expand(y, w, batch, out) is out
    assert g.calls == [("B", "tables", ((4,),), 7, -1, y, out, *y.stride(), *out.stride())]
    hot = ops._hot_expand
    s, r = w.num_slices, w.max_rank
    calls = {  # (y, base_out): the hot path takes it
        "valid": (y, out, True),
        "y contiguous": (y.contiguous(), out, True),
        "out bf16": (y, out.bfloat16(), True),
        "y fp16 (not the armed dtype)": (y.half(), out, False),
        "y subclass": (torch.nn.Parameter(y, requires_grad=False), out, False),
        "y slices": (torch.randn(s + 1, t, r), out, False),
        "y rank": (torch.randn(s, t, r - 1), out, False),
        "y rows": (torch.randn(s, t - 1, r), out, False),
        "y 2-d": (y[0], out, False),
        "y int": (y.int(), out, False),
        "y on meta": (y.to("meta"), out, False),
        "out rows": (y, out[:-1], False),
        "out columns": (y, out[:, :-1], False),
        "out fp64": (y, out.double(), False),
        "out int": (y, out.int(), False),
        "out on meta": (y, out.to("meta"), False),
        "out not a tensor": (y, out.tolist(), False),
    }
    for what, (yv, o, want) in calls.items():
        n = len(g.calls)
        took = hot(yv, w, batch, o)
        assert took == want, what
        assert took <= _valid(ops._validate_expand, yv, w, batch, o, False), what
        assert len(g.calls) == n + took, what
    with pytest.raises(ValueError, match="base_out"):
        ld.lora_expand(y, w, batch, out[:-1])
    g.result = NotImplemented
    assert not hot(y, w, batch, out) and em[0] is None


@needs_native
def test_public_ops_bind_on_the_second_call_with_the_same_objects(monkeypatch) -> None:
    """``_launch_pub`` records the first Python-path call's batch, plan and weights version
    and binds (then launches and arms) on the next call with the same ones: calls that
    alternate between batches, follow a load, or run under capture never bind."""
    L, ops, w, batch, t, g = _pub_case(monkeypatch)
    g.dev = 0
    monkeypatch.setattr(torch.Tensor, "get_device", lambda self: 0)
    y = torch.randn(w.num_slices, t, w.max_rank)
    out = torch.randn(t, w.total_out)
    p = L.plan_for("expand", w, t)
    values = (y, out, *y.stride(), *out.stride())

    def launch(b):
        return L._launch_pub(L.OP_EXPAND, "_EGROUP", p, w, b, y, t, lambda: tuple(range(24)),
                             L._E_PUB, ((4,),), values, L._E_PUB_LAYOUT)

    assert not launch(batch) and not g.binds
    assert launch(batch) and g.binds == [L._E_PUB] and g.calls[-1][4:] == (0, *values)
    assert w._fl_hot_e[t][0] is not None and ops._hot_expand is not None
    b2 = type(batch).from_token_adapters([0, 1, -1, 2, 0])
    assert not launch(b2) and not launch(batch) and len(g.binds) == 1
    assert launch(batch) and len(g.binds) == 2
    w.version += 1
    assert not launch(batch) and len(g.binds) == 2
    monkeypatch.setattr(L, "_capturing", lambda: True)
    assert not launch(batch) and len(g.binds) == 2


@needs_native
def test_hot_layout_codes_must_fit_the_op(monkeypatch) -> None:
    """``fl_hot`` refuses a layout naming a value the op's call does not have (no NULL slot
    can reach a launch)."""
    import weakref

    import lora_dispatch as ld
    from lora_dispatch.kernels.triton import launch as L

    g = HotGroup()
    monkeypatch.setattr(L, "_capturing", lambda: False)  # no driver query on the CPU
    monkeypatch.setattr(L, "_raw_stream", lambda dev: g.stream)

    w = ld.LoRAWeights(3, 64, (32, 16, 16), 8, dtype=torch.float16)
    batch = ld.LoRABatch.from_token_adapters([0, 1, -1, 2, 0])
    x = torch.randn(5, 64).half()

    def arm(op, layout, kind=0):
        em = [None]
        L._install_hot(em, w, weakref.ref(batch), weakref.ref(w), "_GROUP", g, "B", ((1,),),
                       x, kind, op=op, slot=0, layout=layout)
        return em[0]

    assert arm(L.OP_SHRINK, (L.V_Y, L.V_X, L.V_Y, L.V_XS0, L.V_XS1)) is not None
    for op, layout in ((L.OP_SHRINK, (L.V_O,)), (L.OP_SHRINK, (L.V_YS0,)),
                       (L.OP_EXPAND, (L.V_X,)), (L.OP_ADD, (L.V_Y,)), (L.OP_ADD, (L.V_XD,)),
                       (L.OP_ADD, (12,))):
        with pytest.raises(ValueError, match="layout code"):
            arm(op, layout)
    with pytest.raises(ValueError, match="op must be"):
        arm(L.OP_SHRINK, (), kind=2)  # the shrink's call has no base_out


def test_public_per_call_slots_name_the_kernels_parameters() -> None:
    """The native per-call paths of the public ops rewrite these parameter slots per call:
    they must be the kernels' ``x`` / ``y`` / ``out`` and their strides (a slot off by one
    would launch with a stride as ``K_SPLIT``), and the argument builders must fill every
    parameter before the constexprs."""
    import torch

    import lora_dispatch as ld
    from lora_dispatch.kernels.triton import launch as L

    def names(kernel, slots):
        jit = getattr(kernel, "_fl_jit", None) or getattr(kernel, "__wrapped__", kernel)
        return [jit.arg_names[i] for i in slots]

    assert names(L.shrink_kernel, L._S_PUB) == ["x_ptr", "y_ptr", "stride_xm", "stride_xk"]
    assert names(L.shrink_ticket_kernel, L._T_PUB) == ["x_ptr", "y_ptr", "stride_xm",
                                                       "stride_xk"]
    assert names(L.expand_kernel, L._E_PUB) == ["y_ptr", "out_ptr", "stride_ys", "stride_yt",
                                                "stride_yr", "stride_om", "stride_on"]
    if L.shrink_gluon_kernel is not None:
        assert names(L.shrink_gluon_kernel, L._GS_PUB) == ["x_desc", "x_ptr", "y_ptr",
                                                           "stride_xm", "stride_xk"]
        assert names(L.expand_gluon_kernel, L._GE_PUB) == ["o_desc", "y_ptr", "out_ptr",
                                                           "stride_ys", "stride_yt",
                                                           "stride_yr", "stride_om"]
    w = ld.LoRAWeights(3, 64, (32, 16), 16, dtype=torch.float16)
    batch = ld.LoRABatch.from_token_adapters(torch.tensor([0, -1, 2]))
    x = torch.randn(3, 64).half()
    p = L._shrink_plan(w, 3, atomic=True, split_k=2, fill=False)
    tp = L.ticket_plan(p, 3)
    y = torch.empty(2, 3, 16)
    args = L._ticket_args(tp, x, x.stride(), w, batch, torch.zeros(2 * tp.words,
                                                                   dtype=torch.int32), y, 3)
    jit = getattr(L.shrink_ticket_kernel, "_fl_jit", L.shrink_ticket_kernel)
    params = [n for i, n in enumerate(jit.arg_names) if i not in jit.constexprs]
    assert len(args) == len(params) and len(tp.cx) == len(jit.arg_names) - len(params)
    assert [args[i] for i in L._T_PUB] == [x, y, *x.stride()]
