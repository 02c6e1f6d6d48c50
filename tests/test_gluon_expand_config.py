"""The Gluon expand's selection (``configs.expand_gluon``), its plans and its launch, on a
CPU: which devices, releases and shapes take it, loud failure when forced, the per-call
check of ``base_out`` and the ranks, and the arguments bound to the kernel's signature."""

from __future__ import annotations

import inspect
import weakref

import pytest
import torch
from helpers import same_arg

import lora_dispatch as ld
from lora_dispatch.devices import configs
from lora_dispatch.devices.info import DeviceInfo
from lora_dispatch.launchers import native

H200 = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA H200", "sm_90", 132, 32, (9, 0))
A100 = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA A100-SXM4-80GB", "sm_80", 108, 32,
                  (8, 0))
MI300X = DeviceInfo("rocm", torch.device("cuda", 0), "AMD Instinct MI300X", "gfx942", 304, 64)
QKV = (4096, 1024, 1024)
SHIPPED = configs.GluonExpandConfig(64, 64, 16, 5, 4, 3)  # out ring 5, B ring 3
WIDE_BLOCKS = configs.GluonExpandConfig(64, 128, 16, 4, 4, 2)  # gate_up r64, H200
WIDE_BLOCKS_8 = configs.GluonExpandConfig(64, 128, 8, 4, 4, 2)


@pytest.fixture(autouse=True)
def _triton_36(monkeypatch):
    monkeypatch.setattr(configs, "_triton_version", lambda: (3, 6))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(configs.ENV_GLUON_EXPAND, raising=False)
    monkeypatch.delenv(configs.ENV_GLUON, raising=False)


@pytest.mark.parametrize("t,outs,rank,want", [
    (8192, QKV, 64, SHIPPED),
    (4096, QKV, 64, SHIPPED),
    (8192, (14336, 14336), 64, WIDE_BLOCKS),
    (4096, (14336, 14336), 64, WIDE_BLOCKS_8),  # 1792 programs: 6.8 waves, not 3.4
    (2048, (14336, 14336), 64, WIDE_BLOCKS),  # 448 programs, 1.7 waves of 264
    (1024, (14336, 14336), 64, WIDE_BLOCKS),
    (1023, (14336, 14336), 64, None),  # below the measured range
    (2048, (14336, 14336), 16, None),  # rank 16 keeps the Triton expand
    (8192, (14336, 14336 + 64), 64, SHIPPED),  # a width off 128 keeps 64-column blocks
    (4096, (14336, 14336 + 64), 64, SHIPPED),
    (2048, (14336, 14336 + 64), 64, None),  # ... and the Triton expand below 4096 tokens
    (4095, QKV, 64, None),  # T=2048 lost (probe), 4096 won
    (8192, QKV, 16, None),  # rank 16 lost
    (8192, QKV, 128, None),  # not measured
    (8192, (4096,), 64, None),  # a 4096-wide slice: no gain
    (8192, (4096, 1000, 1048), 64, None),  # widths not multiples of 64
])
def test_auto_hopper_wide_rank64_prefill(t, outs, rank, want):
    assert configs.expand_gluon(H200, t, outs, rank, 2) == want
    assert configs.expand_gluon(H200, t, outs, rank, 4) is None  # fp32 weights
    for info in (A100, MI300X):
        assert configs.expand_gluon(info, t, outs, rank, 2) is None
    assert configs.expand_gluon(H200, t, outs, rank, 2, available=False) is None


def test_auto_h100_keeps_the_triton_expand_on_wide_outputs():
    """H100: the Gluon expand takes qkv widths but not gate_up's (Triton measured ahead)."""
    h100 = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA H100 80GB HBM3", "sm_90", 132,
                      32, (9, 0))
    assert h100.family == "h100"
    assert configs.expand_gluon(h100, 8192, QKV, 64, 2) == SHIPPED
    assert configs.expand_gluon(h100, 8192, (14336, 14336), 64, 2) is None
    assert configs.expand_gluon(H200, 8192, (14336, 14336), 64, 2) == WIDE_BLOCKS


WIDE = configs.GluonExpandConfig(128, 64, 16, 4, 8, 4)
SHORT = configs.GluonExpandConfig(64, 64, 8, 5, 4, 3)


@pytest.mark.parametrize("t,outs,want", [
    (4096, QKV, SHIPPED),  # one wave of 64-token programs (384 of 396 slots)
    (4608, QKV, WIDE),  # 432 / 396 slots spill; 216 of 128 tokens fit 264
    (5120, QKV, WIDE),
    (5632, QKV, WIDE),  # 264 of 264
    (6144, QKV, SHORT),  # 1152 of 512-column programs fill 2.9 waves
    (7168, QKV, SHIPPED),  # the three tie at 85% of the last wave
    (8192, QKV, SHIPPED),  # 768 of 792
    (16384, QKV, SHIPPED),  # 3.9 waves: no fit
    (5120, (14336 + 64, 14336), SHIPPED),  # 5.7 waves: no fit
    (5120, (14336, 14336), WIDE_BLOCKS_8),  # 128-column blocks: 8 a program fill 8.5 waves
    (6144, (14336, 14336), WIDE_BLOCKS_8),
    (3072, (14336, 14336), WIDE_BLOCKS),  # 16 and 8 tie (85%): the first
])
def test_auto_tiling_fills_the_last_wave(t, outs, want, monkeypatch):
    assert configs.expand_gluon(H200, t, outs, 64, 2) == want
    monkeypatch.setenv(configs.ENV_GLUON_EXPAND, "1")
    assert configs.expand_gluon(H200, t, outs, 64, 2) == want
    assert configs.expand_gluon(H200, t, outs, 16, 2) == SHIPPED  # measured at rank 64 only


def test_release_and_interpreter_gate(monkeypatch):
    monkeypatch.setattr(configs, "_triton_version", lambda: (3, 5))
    assert configs.expand_gluon(H200, 8192, QKV, 64, 2) is None
    monkeypatch.setattr(configs, "_triton_version", lambda: (3, 6))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert configs.expand_gluon(H200, 8192, QKV, 64, 2) is None


def test_env_forces_and_turns_off(monkeypatch):
    monkeypatch.setenv(configs.ENV_GLUON_EXPAND, "0")
    assert configs.expand_gluon(H200, 8192, QKV, 64, 2) is None
    monkeypatch.setenv(configs.ENV_GLUON_EXPAND, "1")
    assert configs.expand_gluon(H200, 1, QKV, 16, 2) == SHIPPED
    assert configs.expand_gluon(H200, 64, (4096,), 128, 2) == SHIPPED
    for info, outs, rank, itemsize, why in (
        (A100, QKV, 64, 2, "Hopper"),
        (H200, QKV, 64, 4, "16-bit"),
        (H200, QKV, 24, 2, "max_rank must be one of"),
        (H200, (1000,), 64, 2, "multiple of 64"),
    ):
        with pytest.raises(RuntimeError, match=why):
            configs.expand_gluon(info, 8192, outs, rank, itemsize)
    monkeypatch.setenv(configs.ENV_GLUON_EXPAND, "yes")
    with pytest.raises(ValueError, match="LORA_DISPATCH_GLUON_EXPAND"):
        configs.expand_gluon(H200, 8192, QKV, 64, 2)


@pytest.mark.parametrize("kw", [
    dict(block_m=32, block_n=64, col_blocks=16, stages=4, num_warps=2, b_stages=4),
    dict(block_m=64, block_n=64, col_blocks=16, stages=4, num_warps=8, b_stages=4),
    dict(block_m=64, block_n=32, col_blocks=16, stages=4, num_warps=4, b_stages=4),
    dict(block_m=64, block_n=64, col_blocks=16, stages=2, num_warps=4, b_stages=4),
    dict(block_m=64, block_n=64, col_blocks=0, stages=4, num_warps=4, b_stages=4),
    dict(block_m=64, block_n=64, col_blocks=16, stages=4, num_warps=4, b_stages=1),
    dict(block_m=64, block_n=64, col_blocks=16, stages=4, num_warps=4, b_stages=9),
    dict(block_m=64, block_n=128, col_blocks=16, stages=4, num_warps=4, b_stages=2,
         b_block=32),
])
def test_config_validated(kw):
    with pytest.raises(ValueError, match="GluonExpandConfig"):
        configs.GluonExpandConfig(**kw)


def _launch():
    from lora_dispatch.kernels.triton import launch as L

    if L.expand_gluon_kernel is None:
        pytest.skip("no Gluon in this Triton release")
    return L


def test_plan_carries_the_gluon_launch(monkeypatch):
    """A Hopper prefill expand plan carries the Gluon launch beside the Triton one: its grid
    over 64-token tiles and 1024-column groups per slice, the shrink's split, the
    programmatic launch; explicit Triton configs (sweeps, probes) carry none."""
    L = _launch()
    w = ld.LoRAWeights(5, 4096, QKV, 64, dtype=torch.bfloat16)
    p = L._expand_plan(w, 8192, 2, pdl=True, info=H200)
    g = p.gluon
    assert g is not None and not g.forced and g.cfg == SHIPPED
    assert g.nb == 4 + 1 + 1 and g.grid == (6 * (8192 // 64 + 5),)
    assert g.cx == (3, L.tile_index(64), 2, 16, 5, 3, 16, True, 4)
    assert g.tile[0] == [64, 1, 64]  # out as [T, N / 64, 64]: boxes of 1 x 64 columns
    assert L._expand_plan(w, 2048, 1, info=H200).gluon is None
    assert L._expand_plan(w, 8192, 1, cfg=p_cfg(L, w), info=H200).gluon is None
    monkeypatch.setattr(L, "describe", lambda dev: H200)
    ap = L._two_pass_plan(w, 8192)
    assert ap.expand.gluon is not None and ap.expand.gluon.cx[2] == ap.shrink.split
    if ap.alt is not None:  # the Gluon shrink's plan: its own split
        assert ap.alt.expand.gluon.cx[2] == ap.alt.shrink.split


def p_cfg(L, w):
    return configs.expand_config(H200, 8192, w.total_out, 64, 2, widths=QKV)


def test_gluon_expand_ok_checks_out_and_ranks(monkeypatch):
    L = _launch()
    w = ld.LoRAWeights(3, 256, (128, 64, 64), 64, dtype=torch.bfloat16)
    monkeypatch.setenv(configs.ENV_GLUON_EXPAND, "1")
    forced = L._expand_plan(w, 64, 1, info=H200).gluon
    g = forced._replace(forced=False)  # as an automatic plan
    buf = torch.zeros(64, 320, dtype=torch.bfloat16)
    out = buf[:, :256]
    monkeypatch.setattr(L, "_NATIVE_DESC", [True])
    assert L._gluon_expand_ok(g, out, w)
    assert not L._gluon_expand_ok(g, buf[:, 1:257], w)  # misaligned base
    assert not L._gluon_expand_ok(g, torch.zeros(64, 256), w)  # fp32 out
    assert not L._gluon_expand_ok(g, torch.zeros(256, 64, dtype=torch.bfloat16).T, w)
    monkeypatch.setattr(L, "_NATIVE_DESC", [False])
    assert not L._gluon_expand_ok(g, out, w)  # Triton's JIT path, not capturing
    monkeypatch.setattr(L, "_NATIVE_DESC", [True])
    w.load(0, [torch.randn(8, 256)] * 3, [torch.randn(o, 8) for o in w.out_features], 1.0)
    assert not L._gluon_expand_ok(g, out, w)  # 56 B columns past rank 8 > 64 rows / 2
    assert L._gluon_expand_ok(g, torch.zeros(112, 256, dtype=torch.bfloat16), w)
    assert forced.forced and L._gluon_expand_ok(forced, out, w)


class _Bind:
    """Stands in for a kernel: binds each launch's arguments to its signature."""

    def __init__(self, fn):
        self.sig = inspect.signature(fn)
        self.calls = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, self.sig.bind(*args, **kwargs).arguments))
        return launch


def test_launch_binds_every_parameter(monkeypatch):
    """The public expand's and add_lora's Gluon launches bind to the kernel's signature
    (every parameter once, constexprs by position): checked on a CPU by binding them to
    the kernel function instead of launching it; add_lora launches the shrink, then it."""
    L = _launch()
    bind = _Bind(L.expand_gluon_kernel.fn)
    monkeypatch.setattr(L, "expand_gluon_kernel", bind)
    monkeypatch.setenv(configs.ENV_GLUON_EXPAND, "1")
    monkeypatch.setattr(L, "describe", lambda dev: H200)
    w = ld.LoRAWeights(3, 256, (128, 64, 64), 16, dtype=torch.bfloat16)
    batch = ld.LoRABatch.from_segments([100, 28], [0, 2])
    t = 128
    out = torch.zeros(t, 256, dtype=torch.bfloat16)
    y = torch.zeros(3, t, 16)
    L.expand(y, w, batch, out)
    (grid, args), = bind.calls
    p = L.plan_for("expand", w, t).gluon
    assert grid == p.grid
    assert (args["S"], args["SPLIT"], args["NCOL"], args["STAGES"], args["BSTAGES"],
            args["PDL"], args["num_warps"]) == (3, 1, 16, 5, 3, False, 4)
    assert (args["T"], args["N"], args["NB"], args["stride_om"]) == (t, 256, p.nb, 256)
    assert (args["stride_yp"], args["stride_ys"], args["stride_yt"]) == (0, t * 16, 16)
    assert args["o_desc"].base is out and args["o_desc"].shape == [t, 4, 64]
    assert args["o_desc"].strides == [256, 64, 1] and args["o_desc"].block_shape == [64, 1, 64]
    assert args["b_desc"].shape == [3 * 256, 16] and args["b_desc"].block_shape == [64, 16]
    shrinks = []
    monkeypatch.setattr(L, "_launch_shrink", lambda *a: shrinks.append(a))
    monkeypatch.setattr(L, "_workspace", lambda n, x: torch.zeros(n))
    x = torch.randn(t, 256).to(torch.bfloat16)
    L.add_lora_two_pass(out, x, w, batch, split_k=2)
    assert len(shrinks) == 1 and len(bind.calls) == 2
    _, args = bind.calls[1]
    ap = L.plan_for("add", w, t, "two_pass", 2)
    assert args["SPLIT"] == 2 and args["y_ptr"].numel() >= ap.ws_numel
    assert (args["stride_yp"], args["stride_ys"], args["stride_yt"], args["stride_yr"]) == \
        ap.ys


def test_eager_add_lora_plans_for_the_loaded_ranks(monkeypatch):
    """Eager add_lora over weights whose loaded ranks all sit below ``max_rank`` runs the plan
    of weights whose ``max_rank`` is the loaded ranks' box (a power of two, >= 16): the Gluon
    shrink reads ``A`` and the (forced) Gluon expand ``B`` in boxes that wide, ``R`` staying
    the slot stride; the plan is cached beside the full one. Under CUDA-graph capture, or
    once a loaded rank needs the full width, the full plan (checked by binding both
    launches on a CPU)."""
    L = _launch()
    shrinks, expands = (_Bind(k.fn) for k in (L.shrink_gluon_kernel, L.expand_gluon_kernel))
    monkeypatch.setattr(L, "shrink_gluon_kernel", shrinks)
    monkeypatch.setattr(L, "expand_gluon_kernel", expands)
    monkeypatch.setattr(L, "_GGROUP", None)
    monkeypatch.setattr(L, "_NATIVE_DESC", [True])
    monkeypatch.setattr(L, "_workspace", lambda n, x: torch.zeros(n))
    monkeypatch.setattr(L, "describe", lambda dev: H200)
    monkeypatch.setenv(configs.ENV_GLUON_EXPAND, "1")
    monkeypatch.delenv(configs.ENV_GLUON, raising=False)
    w = ld.LoRAWeights(4, 256, (128, 64, 64), 64, dtype=torch.bfloat16)
    for slot, r in ((0, 16), (2, 9)):
        w.load(slot, [torch.randn(r, 256)] * 3, [torch.randn(o, r) for o in w.out_features],
               1.0)
    t = 4096
    batch = ld.LoRABatch.from_segments([2000, 2096], [0, 2])
    x = torch.randn(t, 256).to(torch.bfloat16)
    out = torch.zeros(t, 256, dtype=torch.bfloat16)

    def boxes():
        shrinks.calls.clear()
        expands.calls.clear()
        L.add_lora(out, x, w, batch)
        (_, sa), = shrinks.calls
        (_, ea), = expands.calls
        assert sa["R"] == 64 and sa["x_desc"].base is x
        assert sa["stride_yt"] == ea["stride_yt"] == sa["a_desc"].block_shape[-2]  # workspace
        return sa["a_desc"].block_shape[-2], ea["b_desc"].block_shape[1]

    assert boxes() == (16, 16)
    plan = L.plan_for("add", w, t)
    cap = L._plans(w)[("add", t, None, None, 16)]
    assert cap.alt.shrink.gluon.cfg.block_r == 16 and cap.alt.shrink.gluon.cap == 16
    assert cap.alt.expand.gluon.cap == 16 and cap.alt.shrink.meta["RCAP"] == 16
    assert plan.alt.shrink.gluon.cfg.block_r == 64 and plan.alt.expand.gluon.cap == 0
    assert boxes() == (16, 16) and L._plans(w)[("add", t, None, None, 16)] is cap
    monkeypatch.setattr(L, "_capturing", lambda: True)
    assert boxes() == (16, 16)  # a CPU x: no capture
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert boxes() == (64, 64)  # a captured graph outlives the loads: the full width
    monkeypatch.setattr(L, "_capturing", lambda: False)
    w.load(3, [torch.randn(17, 256)] * 3, [torch.randn(o, 17) for o in w.out_features], 1.0)
    assert boxes() == (32, 32)
    w.load(1, [torch.randn(40, 256)] * 3, [torch.randn(o, 40) for o in w.out_features], 1.0)
    assert boxes() == (64, 64)  # no narrower power of two covers rank 40


def _prefill_case(monkeypatch, gluon_shrink: bool):
    """Launch module, weights, batch, T, a two-pass plan with the (forced) Gluon expand
    and the pointer or the Gluon shrink, its workspace, an ``x`` and ``out`` meeting the TMA
    contract (CPU: the host-side assembly only)."""
    L = _launch()
    if gluon_shrink and (L._GXGROUP is None or L.shrink_gluon_kernel is None):
        pytest.skip("no Gluon shrink launch group in this Triton release")
    if L._XGROUP is None:
        pytest.skip("no fast launcher")
    monkeypatch.setenv(configs.ENV_GLUON_EXPAND, "1")
    monkeypatch.setenv(configs.ENV_GLUON, "1" if gluon_shrink else "0")
    monkeypatch.setattr(L, "describe", lambda dev: H200)
    w = ld.LoRAWeights(3, 256, (128, 64, 64), 16, dtype=torch.bfloat16)
    batch = ld.LoRABatch.from_segments([100, 28], [0, 2])
    t = 128
    entry = L._two_pass_plan(w, t)
    p = entry.alt if gluon_shrink else entry
    assert p.expand.gluon is not None and (p.shrink.gluon is not None) == gluon_shrink
    ws = torch.empty(p.ws_numel)
    x = torch.randn(t, 256).to(torch.bfloat16)
    out = torch.zeros(t, 256, dtype=torch.bfloat16)
    return L, w, batch, t, entry, p, ws, x, out


@pytest.mark.parametrize("gluon_shrink", [False, True])
def test_prefill_group_slots_follow_the_launch_argument_order(gluon_shrink, monkeypatch):
    """The bound slots of the prefill launch group (the shrink, then the Gluon expand) with
    the per-call values put in are exactly the separate launches' arguments and options, in
    order; the per-call positions hold ``x``'s descriptor (Gluon shrink), ``x``, its
    strides, ``out``'s descriptor, ``out`` and its row stride."""
    L, w, batch, t, _, p, ws, x, out = _prefill_case(monkeypatch, gluon_shrink)
    sp, g = p.shrink, p.expand.gluon
    group = L._GXGROUP if gluon_shrink else L._XGROUP
    slots, varying = L._xgroup_slots(p, group, w, batch, ws, t)
    xs = x.stride()
    od = L.out_descriptor(out, t, w.total_out, out.stride(0), g.tile)
    if gluon_shrink:
        shrink = (*L._gluon_args(sp.gluon, sp.k_split, x, w, batch, ws, t, p.ys),
                  *group.options(0))
        values = (L.rows_descriptor(x, t, 256, xs[0], sp.gluon.tile), x, *xs, od, out,
                  out.stride(0))
    else:
        shrink = (*L._shrink_args(sp, x, xs, w, batch, ws, t, p.ys), *sp.tail)
        values = (x, *xs, od, out, out.stride(0))
    want = (*shrink, *L._gluon_expand_args(g, ws, w, batch, out, t, p.ys),
            *group.options(1))
    assert len(slots) == len(want) and len(varying) == len(values)
    got = list(slots)
    for i, v in zip(varying, values):
        assert slots[i] is None
        got[i] = v
    for i, (a, b) in enumerate(zip(got, want)):
        assert same_arg(a, b), (i, a, b)


@pytest.mark.skipif(not native.available(), reason="the per-call path is native (hot.c)")
@pytest.mark.parametrize("gluon_shrink", [False, True])
def test_prefill_hot_path_launches_only_under_the_armed_conditions(gluon_shrink,
                                                                   monkeypatch):
    """The prefill plans' armed per-call path passes the bound launch fresh descriptors of
    ``x`` and ``out`` and declines (launching nothing) where the call would take another
    kernel: ``x`` off the TMA contract under the Gluon shrink, ``out`` off it or of another
    dtype under the Gluon expand; and on another weights version, group or workspace
    generation. A declined native call drops the path and the binding."""
    from helpers import HotGroup

    L, w, batch, t, entry, p, ws, x, out = _prefill_case(monkeypatch, gluon_shrink)
    name = "_GXGROUP" if gluon_shrink else "_XGROUP"
    g = HotGroup()
    monkeypatch.setattr(L, name, g)
    monkeypatch.setattr(L, "_raw_stream", lambda dev: g.stream)
    monkeypatch.setattr(L, "_capturing", lambda: False)
    L._arm_hot_desc(p, name, "B", x, ws, w, entry)
    assert entry.memo[5] is None  # no group entry memoized for this workspace
    p.memo[6] = (weakref.ref(w), weakref.ref(batch), weakref.ref(ws), g, "B")
    L._arm_hot_desc(p, name, "B", x, ws, w, entry)
    if not gluon_shrink:  # the entry plan: not armed where a Gluon shrink alternative exists
        assert (entry.memo[5] is None) == (p.alt is not None)
        if p.alt is not None:
            return
    hot = entry.memo[5]
    assert hot(out, x, w, batch) and g.launches == 1
    (call,) = g.calls
    sp, ge = p.shrink, p.expand.gluon
    grids = ((sp.gluon.grid if gluon_shrink else sp.grid), ge.grid)
    assert call[:5] == ("B", "tables", grids, 7, -1)
    vals = call[5:]
    if gluon_shrink:
        assert vals[0].base is x and vals[0].shape == L.rows_descriptor(
            x, t, 256, 256, sp.gluon.tile).shape
        vals = vals[1:]
    assert vals[:3] == (x, *x.stride()) and vals[4:] == (out, out.stride(0))
    assert vals[3].base is out and vals[3].shape == [t, w.total_out // 64, 64]
    buf = torch.zeros(t, 272, dtype=torch.bfloat16)
    xm = torch.zeros(t, 264, dtype=torch.bfloat16)[:, 1:257]  # 2-byte base
    assert not hot(out.float(), x, w, batch) and not hot(buf[:, 1:257], x, w, batch)
    assert hot(out, xm, w, batch) != gluon_shrink  # the pointer shrink takes any x
    assert hot(buf[:, :256], x, w, batch)  # a row stride of 272: still the contract
    w.version += 1
    assert not hot(out, x, w, batch)
    w.version -= 1
    monkeypatch.setattr(L, name, HotGroup())
    assert not hot(out, x, w, batch)
    monkeypatch.setattr(L, name, g)
    L._WS_GEN[0] += 1
    assert not hot(out, x, w, batch)
    L._WS_GEN[0] -= 1
    n = len(g.calls)
    g.result = NotImplemented
    assert not hot(out, x, w, batch) and len(g.calls) == n + 1
    assert p.memo[6] is None and entry.memo[5] is None
