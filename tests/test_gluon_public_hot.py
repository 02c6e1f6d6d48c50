"""The public ``lora_shrink`` / ``lora_expand`` through the Gluon kernels' launch groups and
their native per-call paths, on a CPU: the groups' slots against the separate launches'
arguments, binding on the second call, the per-call descriptors, and where the path
declines (the call would take another kernel, another weights version)."""

from __future__ import annotations

import weakref

import pytest
import torch
from helpers import HotGroup, same_arg

import lora_dispatch as ld
from lora_dispatch.devices import configs
from lora_dispatch.devices.info import DeviceInfo
from lora_dispatch.launchers import native

H200 = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA H200", "sm_90", 132, 32, (9, 0))
needs_native = pytest.mark.skipif(not native.available(),
                                  reason="the per-call path is native (hot.c)")


@pytest.fixture(autouse=True)
def _triton_36(monkeypatch):
    monkeypatch.setattr(configs, "_triton_version", lambda: (3, 6))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    monkeypatch.setenv(configs.ENV_GLUON_EXPAND, "1")


def _launch(monkeypatch):
    from lora_dispatch.kernels.triton import launch as L

    if L._GZGROUP is None or L._GEGROUP is None:
        pytest.skip("no Gluon launch groups in this Triton release")
    monkeypatch.setattr(L, "describe", lambda dev: H200)
    return L


def _case(monkeypatch, split: int | None):
    """Launch module, qkv-like bf16 weights, a segmented batch, T, the public shrink's Gluon
    plan (``split`` K splits; 1: the kernel writes its own zeros), ``y``, its strides and an
    ``x`` meeting the TMA contract."""
    L = _launch(monkeypatch)
    w = ld.LoRAWeights(3, 256, (128, 64, 64), 16, dtype=torch.bfloat16)
    batch = ld.LoRABatch.from_segments([100, 28], [0, 2])
    t = 128
    p = L._pick(L.plan_for("shrink", w, t, None, split), torch.empty(t, 256,
                                                                     dtype=torch.bfloat16), w)
    assert p.gluon is not None and p.meta["FILL"] == (split == 1)
    x = torch.randn(t, 256).to(torch.bfloat16)
    y = torch.empty(w.num_slices, t, w.max_rank)
    return L, w, batch, t, p, x, y, (0, t * w.max_rank, w.max_rank, 1)


def _put(slots, varying, values):
    got = list(slots)
    for i, v in zip(varying, values):
        assert slots[i] is None, i
        got[i] = v
    return got


@pytest.mark.parametrize("split", [2, 1])
def test_public_gluon_shrink_slots_are_the_launch_arguments(split, monkeypatch):
    """With the per-call values put in, the public Gluon shrink's group slots are the fill's
    arguments and options (split-K) then the Gluon kernel's arguments and options, in
    order."""
    L, w, batch, t, p, x, y, ys = _case(monkeypatch, split)
    fill = split != 1
    group = L._GZGROUP if fill else L._GSGROUP
    slots = L._gluon_pub_slots(p, w, batch, y, t, ys, fill)
    xs = x.stride()
    xd = L.rows_descriptor(x, t, 256, xs[0], p.gluon.tile)
    want = (*L._gluon_args(p.gluon, p.k_split, x, w, batch, y, t, ys),
            *group.options(int(fill)))
    if fill:
        want = (y, w.num_slices * t * w.max_rank, *L._ZERO_TAIL, *want)
        got = _put(slots, L._GZ_PUB, (y, xd, x, y, *xs))
    else:
        got = _put(slots, L._GS_PUB, (xd, x, y, *xs))
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert same_arg(a, b), (i, a, b)


def test_public_gluon_expand_slots_are_the_launch_arguments(monkeypatch):
    """The same for the public Gluon expand: its slots with ``out``'s descriptor, ``y``,
    ``out``, ``y``'s strides and ``out``'s row stride put in are the kernel's arguments."""
    L = _launch(monkeypatch)
    w = ld.LoRAWeights(3, 256, (128, 64, 64), 16, dtype=torch.bfloat16)
    batch = ld.LoRABatch.from_segments([100, 28], [0, 2])
    t = 128
    p = L.plan_for("expand", w, t)
    assert p.gluon is not None
    y = torch.randn(w.num_slices, t, 2 * w.max_rank)[:, :, ::2]
    out = torch.zeros(t, 320, dtype=torch.bfloat16)[:, :256]
    ys = (0, *y.stride())
    got = _put(L._gluon_expand_pub_slots(p, w, batch, t, ys), L._GE_PUB,
               (L.out_descriptor(out, t, 256, 320, p.gluon.tile), y, out, *ys[1:], 320))
    want = (*L._gluon_expand_args(p.gluon, y, w, batch, out, t, ys), *L._GEGROUP.options(0))
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert same_arg(a, b), (i, a, b)


def _scripted(L, monkeypatch, names):
    """Every group in ``names`` scripted by one :class:`HotGroup` on device 0, the public
    entries cleared, ``w``'s selection this backend (set by the caller)."""
    from lora_dispatch import ops

    g = HotGroup(dev=0)
    for name in names:
        monkeypatch.setattr(L, name, g)
    monkeypatch.setattr(L, "_raw_stream", lambda dev: g.stream)
    monkeypatch.setattr(L, "_capturing", lambda: False)
    monkeypatch.setattr(torch.Tensor, "get_device", lambda self: 0)
    for name in L._HOT_ENTRIES:
        monkeypatch.setattr(ops, name, None)
    return g, ops


def _select(L, w):
    import types

    from lora_dispatch.devices import registry

    impl = types.SimpleNamespace(add_lora=L.add_lora, shrink=L.shrink, expand=L.expand)
    w._selection = (registry.generation, types.SimpleNamespace(impl=impl))


@needs_native
@pytest.mark.parametrize("split", [2, 1])
def test_public_gluon_shrink_binds_then_takes_a_fresh_descriptor_per_call(split, monkeypatch):
    """The public Gluon shrink binds on its second call with the same objects and arms the
    per-call path, which passes a descriptor of the call's ``x`` and a fresh ``y`` in the
    group's slot order; it declines (launching nothing) for an ``x`` off the TMA contract
    (the call would take the pointer kernel), after a load, and without the batch's slots
    where the kernel writes its own zeros."""
    L, w, batch, t, p, x, y, ys = _case(monkeypatch, split)
    fill = split != 1
    name = "_GZGROUP" if fill else "_GSGROUP"
    g, ops = _scripted(L, monkeypatch, [name])
    _select(L, w)
    zgrid = (L._cdiv(w.num_slices * t * w.max_rank, L.ZERO_BLOCK),) if fill else None
    assert not L._pub_gluon_shrink(p, x, w, batch, y, t, ys, zgrid) and not g.binds
    assert L._pub_gluon_shrink(p, x, w, batch, y, t, ys, zgrid)
    assert g.binds == [L._GZ_PUB if fill else L._GS_PUB]
    hot = ops._hot_shrink
    assert hot is not None and w._fl_hot_s[t][0] is not None
    n = len(g.calls)
    x2 = torch.randn(t, 256).to(torch.bfloat16)
    y2 = hot(x2, w, batch)
    assert y2 is not False and y2.shape == (w.num_slices, t, w.max_rank)
    call = g.calls[n]
    grids = (zgrid, p.gluon.grid) if fill else (p.gluon.grid,)
    assert call[:5] == ("B1", "tables", grids, 7, 0)
    vals = call[5:]
    if fill:
        assert vals[0] is y2
        vals = vals[1:]
    assert vals[0].base is x2 and vals[1:] == (x2, y2, 256, 1)
    assert vals[0].shape == L.rows_descriptor(x2, t, 256, 256, p.gluon.tile).shape
    xm = torch.zeros(t, 264, dtype=torch.bfloat16)[:, 1:257]  # a 2-byte base
    assert hot(xm, w, batch) is False and len(g.calls) == n + 1
    wide = torch.zeros(t, 272, dtype=torch.bfloat16)[:, :256]  # a row stride of 272 is fine
    assert hot(wide, w, batch) is not False and g.calls[-1][5 + fill + 1] is wide
    batch.max_slot, ms = None, batch.max_slot
    try:
        assert (hot(x, w, batch) is not False) == fill
    finally:
        batch.max_slot = ms
    w.version += 1
    assert hot(x, w, batch) is False
    w.version -= 1
    g.result = NotImplemented
    assert hot(x, w, batch) is False and w._fl_hot_s[t][0] is None


@needs_native
def test_public_gluon_expand_binds_then_takes_a_fresh_descriptor_per_call(monkeypatch):
    """The public Gluon expand's per-call path passes a descriptor of the call's ``out`` with
    ``y``, ``out`` and their strides, and declines where the call would take the pointer
    expand: ``out`` off the TMA contract or not of the weights' dtype."""
    L = _launch(monkeypatch)
    w = ld.LoRAWeights(3, 256, (128, 64, 64), 16, dtype=torch.bfloat16)
    batch = ld.LoRABatch.from_segments([100, 28], [0, 2])
    t = 128
    p = L.plan_for("expand", w, t)
    g, ops = _scripted(L, monkeypatch, ["_GEGROUP"])
    _select(L, w)
    y = torch.randn(w.num_slices, t, w.max_rank)
    out = torch.zeros(t, 256, dtype=torch.bfloat16)
    ys = (0, *y.stride())
    assert not L._pub_gluon_expand(p, y, w, batch, out, t, ys)
    assert L._pub_gluon_expand(p, y, w, batch, out, t, ys) and g.binds == [L._GE_PUB]
    hot = ops._hot_expand
    assert hot is not None and w._fl_hot_e[t][0] is not None
    n = len(g.calls)
    y2 = torch.randn(w.num_slices, t, 2 * w.max_rank)[:, :, ::2]
    out2 = torch.zeros(t, 320, dtype=torch.bfloat16)[:, :256]
    assert hot(y2, w, batch, out2)
    call = g.calls[n]
    assert call[:5] == ("B1", "tables", (p.gluon.grid,), 7, 0)
    od, *rest = call[5:]
    assert od.base is out2 and od.shape == [t, 4, 64] and od.strides[0] == 320
    assert tuple(rest) == (y2, out2, *y2.stride(), 320)
    om = torch.zeros(t, 264, dtype=torch.bfloat16)[:, 1:257]
    assert not hot(y, w, batch, om) and not hot(y, w, batch, out.float())
    assert len(g.calls) == n + 1
    w.version += 1
    assert not hot(y, w, batch, out)
    w.version -= 1
    assert hot(y, w, batch, out) and len(g.calls) == n + 2


@needs_native
def test_hot_descriptor_kinds_fit_the_op(monkeypatch):
    """``fl_hot`` takes ``x``'s descriptor for add_lora and the shrink, ``out``'s for add_lora
    and the expand, and refuses the others (no descriptor of an operand the call lacks)."""
    L = _launch(monkeypatch)
    g = HotGroup()
    monkeypatch.setattr(L, "_capturing", lambda: False)
    monkeypatch.setattr(L, "_raw_stream", lambda dev: g.stream)
    w = ld.LoRAWeights(3, 64, (32, 16, 16), 8, dtype=torch.float16)
    batch = ld.LoRABatch.from_token_adapters([0, 1, -1, 2, 0])
    x = torch.randn(5, 64).half()

    def arm(op, layout, kind):
        em = [None]
        L._install_hot(em, w, weakref.ref(batch), weakref.ref(w), "_GROUP", g, "B", ((1,),),
                       x, kind, op=op, slot=0, layout=layout)
        return em[0]

    assert arm(L.OP_SHRINK, L._GS_PUB_LAYOUT, 1) is not None
    assert arm(L.OP_EXPAND, L._GE_PUB_LAYOUT, 2) is not None
    for op, kind in ((L.OP_SHRINK, 2), (L.OP_SHRINK, 3), (L.OP_EXPAND, 1), (L.OP_EXPAND, 3)):
        with pytest.raises(ValueError, match="op must be"):
            arm(op, (), kind)
    with pytest.raises(ValueError, match="layout code"):
        arm(L.OP_SHRINK, L._GS_PUB_LAYOUT, 0)  # x's descriptor without kind 1
