"""The Gluon shrink's selection (``configs.shrink_gluon``) and its plans, on a CPU: which
devices, releases and shapes take it, the configs Hopper picks, loud failure when forced."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lora_dispatch as ld
from lora_dispatch.devices import configs
from lora_dispatch.devices.info import DeviceInfo

H200 = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA H200", "sm_90", 132, 32, (9, 0))
H100 = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA H100 80GB HBM3", "sm_90", 132, 32,
                  (9, 0))
A100 = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA A100-SXM4-80GB", "sm_80", 108, 32,
                  (8, 0))
B200 = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA B200", "sm_100", 148, 32, (10, 0))
MI300X = DeviceInfo("rocm", torch.device("cuda", 0), "AMD Instinct MI300X", "gfx942", 304, 64)


@pytest.fixture(autouse=True)
def _triton_36(monkeypatch):
    monkeypatch.setattr(configs, "_triton_version", lambda: (3, 6))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(configs.ENV_GLUON, raising=False)


def cfg_tuple(c):
    return (c.block_m, c.block_k, c.block_r, c.stages, c.num_warps, c.split_k)


def test_h100_family():
    assert H100.family == "h100" and H200.family == "h200"


@pytest.mark.parametrize("t,slices,rank,want", [
    (8192, 3, 64, (64, 64, 64, 6, 4, 1)),  # qkv r64: 128 programs, one wave
    (4096, 3, 64, (64, 64, 64, 6, 4, 2)),
    (2048, 3, 64, (64, 64, 64, 6, 4, 2)),  # rank 64: two splits for the expand's re-reads
    (2048, 3, 32, (64, 64, 32, 6, 4, 4)),
    (1024, 1, 64, (64, 64, 64, 6, 4, 4)),
    (8192, 3, 16, (128, 64, 16, 6, 8, 2)),  # 48 rank rows: 128-token tiles
    (8192, 1, 64, (128, 64, 64, 6, 8, 2)),
    (8192, 2, 64, (64, 64, 64, 6, 4, 1)),
    (2048, 1, 128, (64, 64, 128, 6, 4, 2)),
    (8192, 3, 24, (64, 64, 32, 6, 4, 1)),
    (8192, 2, 128, (64, 64, 128, 5, 4, 1)),  # 256 rows: the ring fits 5 stages
])
def test_hopper_configs(t, slices, rank, want):
    assert configs.shrink_gluon(H200, t, 4096, slices, rank, 2, atomic=False) == \
        configs.shrink_gluon(H200, t, 4096, slices, rank, 2)
    c = configs.shrink_gluon(H200, t, 4096, slices, rank, 2)
    assert cfg_tuple(c) == want
    rows = slices * c.block_r
    assert c.stages * (c.block_m + rows) * c.block_k * 2 <= 224 << 10


@pytest.mark.parametrize("t,slices,rank,want", [
    (8192, 1, 16, (64, 64, 16, 6, 4, 1)),  # public shrink: one split, no atomics
    (6144, 3, 64, (64, 64, 64, 6, 4, 1)),
    (4096, 1, 64, (64, 64, 64, 6, 4, 2)),  # 64 tiles fill under half the units
    (2048, 3, 64, (64, 64, 64, 6, 4, 4)),
])
def test_public_shrink_configs(t, slices, rank, want, monkeypatch):
    auto = configs.shrink_gluon(H200, t, 4096, slices, rank, 2, atomic=True)
    # auto: below half the units in 64-token tiles, and above from 48 padded rank rows
    assert (auto is None) == (t >= 6144 and slices * rank < 48)
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    assert cfg_tuple(configs.shrink_gluon(H200, t, 4096, slices, rank, 2, atomic=True)) == want


@pytest.mark.parametrize("info", [H100, H200])
@pytest.mark.parametrize("t,slices,rank,want", [
    (8192, 3, 64, (64, 64, 64, 6, 4, 1, 1)),  # 192 rows: [64, 64] boxes keep 6 stages
    (6144, 3, 16, (64, 64, 16, 6, 4, 1, 2)),  # 48 rows: two-chunk boxes, 6 stages
    (8192, 1, 64, (64, 64, 64, 6, 4, 1, 2)),
    (8192, 1, 16, None),  # 16 rows: the pointer shrink
    (4096, 3, 16, (64, 64, 16, 6, 4, 2, 1)),  # two K splits: [64, 64] boxes
    (2048, 1, 64, (64, 64, 64, 6, 4, 4, 1)),
])
def test_public_shrink_takes_gluon_on_full_waves(info, t, slices, rank, want):
    """Hopper's public shrink keeps the Gluon kernel (one split, its own zeros) where 64-token
    tiles fill half the units, from 48 padded rank rows, and moves two 64-wide chunks a
    stage where one split's ring keeps 6 stages; so does add_lora's workspace shrink with
    one split (the same on the H100 and the H200)."""
    c = configs.shrink_gluon(info, t, 4096, slices, rank, 2, atomic=True)
    assert (None if c is None else (*cfg_tuple(c), c.chunks)) == want
    if c is not None:
        assert c.stages * (c.block_m + slices * c.block_r) * 64 * c.chunks * 2 <= 224 << 10
    workspace = configs.shrink_gluon(info, t, 4096, slices, rank, 2)
    rows = slices * workspace.block_r
    assert workspace.chunks == (2 if workspace.split_k == 1 and rows <= 64 else 1)
    assert workspace == configs.shrink_gluon(H100 if info is H200 else H200, t, 4096, slices,
                                             rank, 2)


def test_chunks_fall_back_where_k_or_the_ring_does_not_fit(monkeypatch):
    monkeypatch.setattr(configs, "_gluon_chunks", lambda *a: 4)
    c = configs.shrink_gluon(H100, 8192, 4096, 3, 64, 2, atomic=True)
    assert (c.chunks, c.stages) == (2, 3)  # four: one stage of 256 + 192 rows; two: three
    c = configs.shrink_gluon(H100, 8192, 4096, 1, 16, 2)
    assert (c.chunks, c.stages) == (4, 3)
    assert configs.shrink_gluon(H100, 8192, 4160, 1, 16, 2).chunks == 1  # K = 65 x 64


def test_auto_only_hopper_prefill_and_fitting_shapes():
    assert configs.shrink_gluon(H200, 2047, 4096, 3, 64, 2) is None  # decode / short prefill
    for info in (A100, B200, MI300X):
        assert configs.shrink_gluon(info, 8192, 4096, 3, 64, 2) is None
    assert configs.shrink_gluon(H200, 8192, 4096, 3, 64, 4) is None  # fp32
    assert configs.shrink_gluon(H200, 8192, 1000, 1, 64, 2) is None  # K % 64
    assert configs.shrink_gluon(H200, 8192, 4096, 4, 16, 2) is None  # 4 slices
    assert configs.shrink_gluon(H200, 8192, 4096, 3, 128, 2) is None  # 384 rank rows
    assert configs.shrink_gluon(H200, 8192, 4096, 3, 64, 2, available=False) is None


@pytest.mark.parametrize("atomic,slices,rank,least", [
    (False, 3, 16, 512),  # add_lora, 48 rank rows
    (False, 1, 64, 512),
    (False, 3, 64, 2048),  # 192 rows
    (True, 1, 64, 1024),  # the public shrink, 64 rows
    (True, 1, 16, 2048),
])
def test_auto_threshold_follows_rows_and_epilogue(atomic, slices, rank, least):
    """Below 2048 tokens the shapes that won the H200 A/B take it automatically."""
    assert configs.shrink_gluon(H200, least - 1, 4096, slices, rank, 2, atomic=atomic) is None
    assert configs.shrink_gluon(H200, least, 4096, slices, rank, 2, atomic=atomic) is not None


def test_release_and_interpreter_gate(monkeypatch):
    monkeypatch.setattr(configs, "_triton_version", lambda: (3, 5))
    assert configs.shrink_gluon(H200, 8192, 4096, 3, 64, 2) is None
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    with pytest.raises(RuntimeError, match="Triton 3.6"):
        configs.shrink_gluon(H200, 8192, 4096, 3, 64, 2)
    monkeypatch.setattr(configs, "_triton_version", lambda: (3, 6))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="interpreter"):
        configs.shrink_gluon(H200, 8192, 4096, 3, 64, 2)


def test_env_forces_and_turns_off(monkeypatch):
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    assert cfg_tuple(configs.shrink_gluon(H200, 1, 4096, 3, 64, 2)) == (64, 64, 64, 6, 4, 4)
    for info, why in ((A100, "Hopper"), (MI300X, "Hopper")):
        with pytest.raises(RuntimeError, match=why):
            configs.shrink_gluon(info, 8192, 4096, 3, 64, 2)
    with pytest.raises(RuntimeError, match="16-bit"):
        configs.shrink_gluon(H200, 8192, 4096, 3, 64, 4)
    with pytest.raises(RuntimeError, match="Gluon Hopper API"):
        configs.shrink_gluon(H200, 8192, 4096, 3, 64, 2, available=False)
    monkeypatch.setenv(configs.ENV_GLUON, "0")
    assert configs.shrink_gluon(H200, 8192, 4096, 3, 64, 2) is None
    monkeypatch.setenv(configs.ENV_GLUON, "yes")
    with pytest.raises(ValueError, match="LORA_DISPATCH_GLUON"):
        configs.shrink_gluon(H200, 8192, 4096, 3, 64, 2)


@pytest.mark.parametrize("kw", [
    dict(block_m=32), dict(num_warps=8), dict(block_k=48), dict(block_r=24),
    dict(stages=1), dict(split_k=0), dict(chunks=3), dict(chunks=2, block_k=128),
])
def test_config_validated(kw):
    base = dict(block_m=64, block_k=64, block_r=64, stages=6, num_warps=4, split_k=1)
    with pytest.raises(ValueError, match="GluonShrinkConfig"):
        configs.GluonShrinkConfig(**{**base, **kw})


def test_plan_takes_the_gluon_split_and_keeps_the_triton_fallback(monkeypatch):
    """A Hopper prefill plan carries the Gluon launch (its grid over 64-token tiles, its
    split shared with the Triton kernel it falls back to and the expand that sums the
    splits); an explicit split_k wins; K splits stay multiples of the Gluon K step."""
    from lora_dispatch.kernels.triton import launch as L

    pytest.importorskip("triton")
    w = ld.LoRAWeights(5, 4096, (4096, 1024, 1024), 64, dtype=torch.bfloat16)
    p = L._shrink_plan(w, 2048, atomic=False, info=H200)
    if not L.GLUON_AVAILABLE:
        assert p.alt is None
        return
    assert p.gluon is None and p.split == 2  # the Triton kernel keeps its own split
    g = p.alt
    assert g.gluon is not None and g.split == g.gluon.grid[1] == 2 and g.alt is None
    assert g.gluon.grid[0] == 2048 // 64 + 5 and g.k_split == 2048
    assert g.gluon.cx == (3, 64, 2, 6, False, False, True, False) and not g.gluon.forced
    p3 = L._shrink_plan(w, 2048, atomic=True, split_k=3, info=H200).alt
    assert p3.split == 3 and p3.k_split % 64 == 0 and p3.gluon.cx[4:6] == (True, False)
    w16 = ld.LoRAWeights(5, 4096, (4096,), 16, dtype=torch.bfloat16)
    assert L._shrink_plan(w16, 8192, atomic=True, info=H200).alt is None  # 16 rank rows
    assert L._shrink_plan(w, 8192, atomic=True, info=H200).alt.split == 1
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    p1 = L._shrink_plan(w16, 8192, atomic=True, info=H200).alt
    assert p1.split == 1 and p1.gluon.cx[4:6] == (False, True)  # one split: writes zeros


def test_pick_takes_the_gluon_plan_for_aligned_x_and_fitting_ranks(monkeypatch):
    from lora_dispatch.kernels.triton import launch as L

    if not L.GLUON_AVAILABLE:
        pytest.skip("no Gluon in this Triton release")
    w = ld.LoRAWeights(64, 256, (128, 64, 64), 16, dtype=torch.bfloat16)
    plan = L._shrink_plan(w, 4096, atomic=False, info=H200)
    x = torch.randn(4096, 264).to(torch.bfloat16)
    monkeypatch.setattr(L, "_NATIVE_DESC", [True])  # descriptors encoded in C: eager too
    assert L._pick(plan, x[:, :256], w) is plan.alt
    monkeypatch.setattr(L, "_NATIVE_DESC", [False])  # Triton's JIT path: graphs only
    assert L._pick(plan, x[:, :256], w) is plan  # eager: the fast-launched Triton kernel
    assert L._pick(plan, x[:, :256], w, capturing=True) is plan.alt
    assert L._pick(plan, x[:, 1:257], w, capturing=True) is plan  # misaligned: no TMA
    b1 = [torch.randn(o, 1) for o in w.out_features]
    w.load(0, [torch.randn(8, 256)] * 3, [torch.randn(o, 8) for o in w.out_features], 1.0)
    assert L._pick(plan, x[:, :256], w, capturing=True) is plan.alt  # 24 A rows past ranks
    for slot in range(1, 46):  # 8 + 45 * 15 = 683 ranks short: 2049 A rows > 4096 / 2
        w.load(slot, [torch.randn(1, 256)] * 3, b1, 1.0)
    assert L._pick(plan, x[:, :256], w, capturing=True) is plan
    w.unload(45)  # 668 short: 2004 rows
    assert L._pick(plan, x[:, :256], w, capturing=True) is plan.alt
    w.load(45, [torch.randn(1, 256)] * 3, b1, 1.0)
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    forced = L._shrink_plan(w, 4096, atomic=False, info=H200)
    assert L._pick(forced, x[:, :256], w) is forced.alt


def test_chunked_plan_descriptors_view_k_outermost(monkeypatch):
    """A plan with two-chunk boxes: ``x``'s descriptor is the ``[K / 64, T, 64]`` view
    (strides ``64, row stride, 1``, ``[2, 64, 64]`` boxes, one 128-byte swizzle), ``A``'s
    the ``[K / 64, rows, 64]`` view of ``A [L * S * R, K]`` (memoized per box), K splits
    in whole boxes."""
    from lora_dispatch.kernels.triton import launch as L

    if not L.GLUON_AVAILABLE:
        pytest.skip("no Gluon in this Triton release")
    monkeypatch.setattr(configs, "_gluon_chunks", lambda *a: 2)
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    w = ld.LoRAWeights(3, 4096, (4096, 1024, 1024), 16, dtype=torch.bfloat16)
    for split in (1, 3):
        p = L._shrink_plan(w, 2048, atomic=True, split_k=split, info=H100).alt
        assert p.gluon.cfg.chunks == 2 and p.k_split % 128 == 0 and p.split == split
    g = p.gluon
    buf = torch.randn(2048, 4096 + 64).to(torch.bfloat16)
    x = buf[:, 64:]
    xd = L.rows_descriptor(x, 2048, 4096, x.stride(0), g.tile)
    assert (xd.shape, xd.strides, xd.block_shape) == ([64, 2048, 64], [64, 4160, 1],
                                                      [2, 64, 64])
    assert xd.base is x and xd.layout.rank == 3 and xd.layout.swizzle_byte_width == 128
    ad = L._a_desc(w, g.cfg)
    assert (ad.shape, ad.strides, ad.block_shape) == ([64, 3 * 3 * 16, 64], [64, 4096, 1],
                                                      [2, 16, 64])
    assert L._a_desc(w, g.cfg) is ad
    assert L._a_desc(w, dataclasses.replace(g.cfg, chunks=1)).block_shape == [16, 64]


def test_rank_deficit_memo_follows_loads():
    from lora_dispatch.kernels.triton import launch as L

    w = ld.LoRAWeights(3, 64, (32,), 8)
    assert L._rank_deficit(w) == 0 and L._gluon_takes("shrink", w, 1)  # nothing loaded
    w.load(0, [torch.randn(8, 64)], [torch.randn(32, 8)], 1.0)
    assert L._rank_deficit(w) == 0
    w.load(1, [torch.randn(4, 64)], [torch.randn(32, 4)], 1.0)
    assert L._rank_deficit(w) == 4
    assert L._gluon_takes("shrink", w, 8) and not L._gluon_takes("shrink", w, 7)
    assert L._gluon_takes("expand", w, 8) and not L._gluon_takes("expand", w, 7)
    w.load(2, [torch.randn(1, 64)], [torch.randn(32, 1)], 1.0)
    assert L._rank_deficit(w) == 11
    w.unload(1)
    w.unload(2)
    assert L._rank_deficit(w) == 0
    assert L._rank_deficit(_view(w)) is None  # inside torch.compile: no host ranks
    assert not L._gluon_takes("shrink", _view(w), 8192)


@pytest.mark.parametrize("t,slices,deficit,shrink,expand", [
    (8192, 3, 0, True, True),  # uniform ranks
    (8192, 3, 96, True, True),  # ab-mixed-ranks: 4 adapters 16 / 64 (A past ranks 3.5% of x)
    (8192, 3, 544, True, True),  # 16 adapters 8 / 16 / 32 / 64 (20%): Gluon 11% faster
    (2048, 3, 96, True, True),  # 4 adapters at T=2048 (14%): 4% faster
    (2048, 3, 544, False, True),  # 16 adapters at T=2048 (80%): even; B 13% of out
    (8192, 3, 3072, False, True),  # 128 adapters 16 / 64 (112%): the shrink 3% slower
    (8192, 3, 4352, False, False),  # 128 adapters 8-64 (159%): 7% slower; B past ranks 27%
    (4096, 1, 2048, True, True),  # one slice: A 50% of x, B 25% of out
    (4096, 1, 2049, False, False),
])
def test_gluon_takes_ranks_by_the_bytes_past_them(t, slices, deficit, shrink, expand):
    assert configs.gluon_takes_ranks("shrink", slices, deficit, t) is shrink
    assert configs.gluon_takes_ranks("expand", slices, deficit, t) is expand
    with pytest.raises(ValueError, match="kernel must be"):
        configs.gluon_takes_ranks("fused", slices, deficit, t)


def _view(w):
    from lora_dispatch.ops import WeightsView

    return WeightsView(**{f: getattr(w, f) for f in WeightsView._fields if f != "host_ranks"})


def test_launch_binds_every_parameter(monkeypatch):
    """The Gluon launch's arguments bind to the kernel's signature (every parameter once,
    constexprs by position, ``num_warps`` by keyword): checked on a CPU by binding them to
    the kernel function instead of launching it."""
    import inspect

    from lora_dispatch.kernels.triton import launch as L

    if not L.GLUON_AVAILABLE:
        pytest.skip("no Gluon in this Triton release")
    calls = []
    sig = inspect.signature(L.shrink_gluon_kernel.fn)

    class Bind:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append((grid, sig.bind(*args, **kwargs).arguments))
            return launch

    monkeypatch.setattr(L, "shrink_gluon_kernel", Bind())
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    w = ld.LoRAWeights(3, 256, (128, 64, 64), 16, dtype=torch.bfloat16)
    batch = ld.LoRABatch.from_segments([100, 28], [0, 2])
    p = L._shrink_plan(w, 128, atomic=False, pdl=2, info=H200).alt
    x = torch.randn(128, 256).to(torch.bfloat16)
    ws = torch.empty(p.split, 3, 128, 16)
    L._launch_shrink_gluon(p.gluon, p.k_split, x, w, batch, ws, 128, ws.stride()[:3])
    (grid, args), = calls
    assert grid == p.gluon.grid
    assert (args["S"], args["R"], args["GATHER"], args["PDL"], args["num_warps"]) == (
        3, 16, True, True, 4)
    assert args["K_SPLIT"] == p.k_split and args["stride_yt"] == 16


def test_gluon_group_slots_follow_the_launch_argument_order(monkeypatch):
    """The memoized launch-group slots of add_lora on the Gluon plan are exactly the Gluon
    shrink's arguments and options, then the expand's: what the separate launches pass. The
    memo is rebuilt for a new workspace or batch; ``x``, its descriptor and ``base_out`` are
    per call (CPU tensors: only the host-side assembly is checked)."""
    from lora_dispatch.kernels.triton import launch as L

    if not L.GLUON_AVAILABLE or L._GGROUP is None:
        pytest.skip("no Gluon or no fast launcher in this Triton release")
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    w = ld.LoRAWeights(3, 256, (128, 64, 64), 16, dtype=torch.bfloat16)
    t = 128
    sp = L._shrink_plan(w, t, atomic=False, pdl=2, info=H200).alt
    p = L.AddPlan(None, sp, L._expand_plan(w, t, sp.split, pdl=True),
                  sp.split * 3 * t * 16, (3 * t * 16, t * 16, 16, 1), [None] * 4)
    ep = p.expand
    buf = torch.randn(t + 1, 272).to(torch.bfloat16)
    for batch in (ld.LoRABatch.from_segments([100, 28], [0, 2]),
                  ld.LoRABatch.from_segments([28, 100], [1, -1])):
        for ws in (torch.empty(p.ws_numel), torch.empty(2 * p.ws_numel)):
            for x in (buf[:t, :256], buf[1:, 16:]):
                out = torch.randn(t, 3 * w.total_out)[:, 1:1 + w.total_out]
                want = (*L._gluon_args(sp.gluon, sp.k_split, x, w, batch, ws, t, p.ys),
                        *L._GGROUP_OPTS,
                        *L._expand_args(ep, ws, w, batch, out, out.stride(), t, p.ys),
                        *ep.tail)
                got = L._gluon_group_slots(p, out, x, w, batch, ws, t)
                assert len(got) == len(want)
                for a, b in zip(got[1:], want[1:]):
                    assert a is b or (type(a) is int and a == b), (a, b)
                gd, wd = got[0], want[0]
                assert gd.base is x and (gd.shape, gd.strides, gd.block_shape) == (
                    wd.shape, wd.strides, wd.block_shape) and gd.layout == wd.layout
                assert p.memo[1]() is batch and p.memo[2]() is ws
                slots, varying = L._bound_slots(p, True)
                assert len(slots) == len(got)
                assert [got[i] for i in varying[1:]] == [x, *x.stride(), out, *out.stride()]
                for i, (a, b) in enumerate(zip(slots, got)):
                    assert (a is None) if i in varying else (a is b)


def test_early_start_is_graph_only_below_the_eager_threshold(monkeypatch):
    """Below ``gluon_graph_only``'s token count the automatic Gluon plan runs inside CUDA-graph
    capture only (its host cost outweighs its GPU gain eagerly); forced, it runs eagerly."""
    from lora_dispatch.kernels.triton import launch as L

    if not L.GLUON_AVAILABLE:
        pytest.skip("no Gluon in this Triton release")
    assert configs.gluon_graph_only(H200, 512) and not configs.gluon_graph_only(H200, 1024)
    assert not configs.gluon_graph_only(A100, 512)
    monkeypatch.setattr(L, "_NATIVE_DESC", [True])
    w = ld.LoRAWeights(3, 4096, (4096, 1024, 1024), 16, dtype=torch.bfloat16)
    x = torch.randn(1024, 4096).to(torch.bfloat16)
    for t, graph_only in ((512, True), (1024, False)):
        plan = L._shrink_plan(w, t, atomic=False, info=H200)
        assert plan.alt.gluon.graph_only is graph_only
        assert L._pick(plan, x[:t], w, capturing=False) is (plan if graph_only else plan.alt)
        assert L._pick(plan, x[:t], w, capturing=True) is plan.alt
    monkeypatch.setenv(configs.ENV_GLUON, "1")
    forced = L._shrink_plan(w, 512, atomic=False, info=H200)
    assert not forced.alt.gluon.graph_only
    assert L._pick(forced, x[:512], w, capturing=False) is forced.alt
