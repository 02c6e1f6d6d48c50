"""Device registry: simulated platforms, selection, forced-backend errors, logged fallbacks."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

import lora_dispatch as ld
from lora_dispatch import devices
from lora_dispatch.devices import Backend, BackendUnavailableError, DeviceInfo
from lora_dispatch.devices import registry as reg

H100 = DeviceInfo(
    "cuda", torch.device("cuda", 0), "NVIDIA H100 80GB HBM3", "sm_90", 132, 32, (9, 0)
)
A100 = DeviceInfo(
    "cuda", torch.device("cuda", 0), "NVIDIA A100-SXM4-80GB", "sm_80", 108, 32, (8, 0)
)
MI300X = DeviceInfo("rocm", torch.device("cuda", 0), "AMD Instinct MI300X", "gfx942", 304, 64)
TPU = DeviceInfo("xla", torch.device("xla", 0), "TPU v5 lite", "TPU v5 lite", 4, 1)
CPU = DeviceInfo("cpu", torch.device("cpu"), "Some CPU", "x86_64", 2, 1)


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401

        import lora_dispatch.kernels.triton  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_xla_ok() -> bool:
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("info", [H100, A100, MI300X], ids=["h100", "a100", "mi300x"])
def test_gpus_pick_triton(info):
    sel = devices.select(info, torch.bfloat16)
    assert sel.name == ("triton" if _triton_ok() else "reference")


def test_families():
    assert H100.family == "h100" and A100.family == "a100" and MI300X.family == "mi300"
    assert MI300X.warp_size == 64
    assert DeviceInfo("rocm", torch.device("cuda"), "AMD Radeon", "gfx942", 1, 64).family == "mi300"
    assert CPU.family == "x86_64"


def test_cpu_picks_reference_even_with_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert devices.select(CPU).name == "reference"


def test_tpu_selection_and_logged_fallback(caplog):
    reg._logged.clear()
    with caplog.at_level(logging.WARNING, logger="lora_dispatch"):
        sel = devices.select(TPU)
        devices.select(TPU)
    if _torch_xla_ok():
        assert sel.name == "xla"
    else:
        assert sel.name == "reference"
        msgs = [r.getMessage() for r in caplog.records if "'xla' unavailable" in r.getMessage()]
        assert len(msgs) == 1, "the fallback is logged exactly once"
        assert "torch_xla is not installed" in msgs[0]
        assert "xla: torch_xla is not installed" in sel.reason


def test_forced_backend_errors(monkeypatch):
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        devices.select(CPU)
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "xla")
    if not _torch_xla_ok():
        with pytest.raises(BackendUnavailableError, match="torch_xla"):
            devices.select(TPU)
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="LORA_DISPATCH_BACKEND='nonsense'"):
        devices.select(CPU)
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "reference")
    sel = devices.select(H100)
    assert sel.name == "reference" and sel.forced and "forced" in sel.reason


def test_forced_backend_error_surfaces_from_ops(monkeypatch):
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    devices.reset()
    w = ld.LoRAWeights(1, 8, 4, 2, dtype=torch.float32)
    b = ld.LoRABatch.from_token_adapters([0])
    with pytest.raises(BackendUnavailableError):
        ld.add_lora(torch.zeros(1, 4), torch.zeros(1, 8), w, b)


def test_backend_validation():
    with pytest.raises(ValueError, match="lower-case"):
        Backend("Bad Name", "m", frozenset({"cpu"}), 0)
    with pytest.raises(ValueError, match="platforms"):
        Backend("x", "m", frozenset({"gpu"}), 0)
    with pytest.raises(ValueError, match="dtypes"):
        Backend("x", "m", frozenset({"cpu"}), 0, dtypes=frozenset({torch.int8}))
    with pytest.raises(TypeError, match="priority"):
        Backend("x", "m", frozenset({"cpu"}), "high")
    with pytest.raises(ValueError, match="already registered"):
        devices.register(devices.get("reference"))


def test_shape_limits_and_custom_backend(monkeypatch):
    b = Backend(
        "limited",
        "lora_dispatch.kernels.reference",
        frozenset({"cpu"}),
        1000,
        max_rank=16,
        dtypes=frozenset({torch.float32}),
    )
    monkeypatch.setitem(reg._REGISTRY, "limited", b)
    devices.reset()
    assert devices.select(CPU, torch.float32, max_rank=16).name == "limited"
    assert devices.select(CPU, torch.float32, max_rank=32).name == "reference"
    assert devices.select(CPU, torch.float16, max_rank=8).name == "reference"
    assert "max_rank 32 > 16" in devices.select(CPU, torch.float32, max_rank=32).reason


def test_selection_cached_on_weights_until_reset(monkeypatch):
    from lora_dispatch.ops import selection

    w = ld.LoRAWeights(1, 8, 4, 2, dtype=torch.float32)
    assert selection(w).name == "reference"
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "nonsense")
    assert selection(w).name == "reference"  # cached
    devices.reset()
    with pytest.raises(ValueError):
        selection(w)


def test_current_and_info():
    d = devices.current("cpu")
    assert d.platform == "cpu" and d.compute_units >= 1
    info = ld.info("cpu")
    for key in (
        "platform",
        "device",
        "backend",
        "backend_reason",
        "torch",
        "triton",
        "launcher",
        "backends",
    ):
        assert key in info
    assert info["backend"] == "reference"
    assert set(info["backends"]) >= {"reference", "triton", "xla"}
    assert info["backends"]["reference"]["runs_here"]


def test_configs_per_device_family():
    from lora_dispatch.devices import configs

    unknown = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA L4", "sm_89", 58, 32, (8, 9))
    for info in (H100, A100, MI300X, unknown):
        dec = configs.shrink_config(info, 1, 4096, 48, 2)
        pre = configs.shrink_config(info, 8192, 4096, 48, 2)
        assert dec.split_k > 1, "decode shrink must split K to fill the device"
        assert pre.split_k <= dec.split_k
        assert pre.block_m >= dec.block_m
        e = configs.expand_config(info, 8192, 6144, 64, 2)
        assert e.block_r >= 16 and e.block_n >= 16
    h, m, a = (configs.shrink_config(i, 64, 4096, 48, 2) for i in (H100, MI300X, A100))
    assert m.num_warps == max(1, h.num_warps // 2), "64-wide wavefronts on CDNA"
    assert m.num_stages <= 2 and a.num_stages <= 4
    # more compute units -> at least as much split-K at decode
    assert (
        configs.shrink_config(MI300X, 1, 4096, 48, 2).split_k
        >= configs.shrink_config(unknown, 1, 4096, 48, 2).split_k
    )


def test_prefill_configs_fill_the_device():
    """Workspace shrink splits K while one split leaves under two programs per unit."""
    from lora_dispatch.devices import configs

    units = H100.compute_units

    def programs(t, cfg, rank, slices=3):
        pairs = slices * -(-rank // cfg.block_n)
        return -(-t // cfg.block_m) * -(-pairs // cfg.rank_blocks)

    for t in (3072, 4096, 6144, 8192, 16384):
        for rank in (16, 64):
            c = configs.shrink_config(H100, t, 4096, rank, 2, atomic=False, slices=3)
            want = 2 if programs(t, c, rank) < 2 * units else 1
            assert c.split_k == want, (t, rank, c)


def test_prefill_shrink_k_step_follows_waves():
    """Several programs per token tile: a 64-wide K step above T=2048, and below it for split
    K once the grid overflows one wave at the programs per unit that a 128-wide step's
    shared-memory buffers leave (H100/H200: 228 KB a unit)."""
    from lora_dispatch.devices import configs

    units = H100.compute_units
    for t in (300, 700, 1024, 1280, 1536, 2048, 3072, 8192):
        for rank in (16, 24, 64, 128):
            c = configs.shrink_config(H100, t, 4096, rank, 2, atomic=False, slices=3)
            pairs = 3 * -(-rank // c.block_n)
            if pairs <= c.rank_blocks:
                continue
            if t > 2048:
                assert c.block_k == 64, (t, rank, c)
                continue
            if c.split_k == 1:
                assert c.block_k == 128, (t, rank, c)
                continue
            smem = c.num_stages * (c.block_m + c.block_n * c.rank_blocks) * 128 * 2
            per_unit = max(1, (228 << 10) // smem)
            grid = -(-t // c.block_m) * -(-pairs // c.rank_blocks) * c.split_k
            assert c.block_k == (64 if grid > units * per_unit else 128), (t, rank, c)
    # the measured H200 points (add_lora qkv)
    k = {(t, r): configs.shrink_config(H100, t, 4096, r, 2, atomic=False, slices=3).block_k
         for t in (1280, 1536, 2048) for r in (16, 64)}
    assert k == {(1280, 16): 128, (1536, 16): 128, (2048, 16): 128,
                 (1280, 64): 128, (1536, 64): 64, (2048, 64): 64}
    k128 = [configs.shrink_config(H100, t, 4096, 128, 2, atomic=False, slices=3)
            for t in (1024, 2048)]
    assert [(c.split_k, c.block_k) for c in k128] == [(2, 64), (1, 128)]


def test_wide_rank_rules():
    """Above T=256 the expand takes ranks up to 128 in one step (no y re-read per column
    block); decode keeps 64-wide steps. The prefill shrink puts up to 96 rank rows in one
    program, so BN-32 ranks take all three qkv blocks."""
    from lora_dispatch.devices import configs

    for t, want in ((1, 64), (64, 64), (256, 64), (257, 128), (1024, 128), (8192, 128)):
        assert configs.expand_config(H100, t, 6144, 128, 2).block_r == want, t
        assert configs.expand_config(H100, t, 6144, 96, 2).block_r == want, t
        assert configs.expand_config(H100, t, 6144, 256, 2).block_r == want, t
        assert configs.expand_config(H100, t, 6144, 64, 2).block_r == 64, t
    for rank, want in ((16, 3), (24, 3), (32, 3), (64, 1)):
        c = configs.shrink_config(H100, 8192, 4096, rank, 2, atomic=False, slices=3)
        assert c.rank_blocks == want and c.block_n * c.rank_blocks <= 96, (rank, c)
    c = configs.shrink_config(H100, 8192, 4096, 32, 2, atomic=False, slices=2)
    assert c.rank_blocks == 2, c


def test_prefill_expand_config():
    """T > 1024: one pipelined config per rank class, the H200 grid's pick: 32 x 128 tiles in
    4 blocks up to rank 32, 64 x 64 tiles in 8 prefetched blocks above; 64 columns at most
    for float32."""
    from lora_dispatch.devices import configs

    for t in (1025, 2048, 6144, 8192, 16384):
        for n in (1000, 4096, 6144, 28672):
            for rank in (1, 8, 16, 32, 48, 64, 128):
                want = (32, 128, 4, 3, 4, False) if rank <= 32 else (64, 64, 4, 3, 8, True)
                e = configs.expand_config(H100, t, n, rank, 2)
                got = (e.block_m, e.block_n, e.num_warps, e.num_stages, e.col_blocks, e.prefetch)
                assert got == want, (t, n, rank, e)
                assert configs.expand_config(H100, t, n, rank, 4).block_n == 64
    mi = configs.expand_config(MI300X, 8192, 4096, 64, 2)
    assert (mi.num_warps, mi.num_stages) == (2, 2), "64-wide wavefronts, ROCm's two stages"


def test_wide_expand_rule():
    """Rank 33-64 prefill on H100 / H200 takes 2048-column programs (64 x 128, 16 blocks,
    8 warps) when every slice is a whole number of spans and there are >= 1.5 of them per
    SM; otherwise (qkv's 1024-wide slices, few tokens, rank <= 32 or > 64, float32, another
    family, no widths) the 64 x 64 config stays."""
    from lora_dispatch.devices import configs

    def wide(info, t, widths, rank=64, itemsize=2):
        e = configs.expand_config(info, t, sum(widths), rank, itemsize, widths=widths)
        narrow = configs.expand_config(info, t, sum(widths), rank, itemsize)
        if (e.block_n, e.col_blocks) == (128, 16):
            assert (e.block_m, e.num_warps, e.prefetch) == (64, 8, True)
            assert e.block_r == narrow.block_r and e.num_stages == narrow.num_stages
            return True
        assert e == narrow or e == replace(narrow, col_blocks=16), (t, widths, rank, e)
        return False

    assert wide(H100, 8192, (4096,))  # 128 tiles x 2 spans = 256 >= 198 programs
    assert wide(H100, 6400, (4096,))  # 100 x 2 = 200
    assert not wide(H100, 6272, (4096,))  # 98 x 2 = 196
    assert not wide(H100, 4096, (4096,))
    assert wide(H100, 2048, (14336, 14336)) and wide(H100, 1088, (14336, 14336))
    assert not wide(H100, 1024, (14336, 14336))
    assert not wide(H100, 8192, (4096, 1024, 1024))
    assert wide(H100, 8192, (4096, 2048, 2048))
    for rank in (16, 32, 128):
        assert not wide(H100, 8192, (14336, 14336), rank=rank)
    assert wide(H100, 8192, (14336, 14336), rank=48)
    assert not wide(H100, 8192, (14336, 14336), itemsize=4)
    assert not wide(A100, 8192, (14336, 14336)) and not wide(MI300X, 8192, (14336, 14336))


def test_long_expand_rule():
    """Rank 33-64 prefill on H100 / H200 outside the wide rule: 16 column blocks of 64 instead
    of 8 when the 16-block grid (``cdiv(T, 64)`` tiles x 1024-column groups) fits one wave of
    4 programs a unit and fills more than half of it (132 units: 264 < programs <= 528)."""
    from lora_dispatch.devices import configs

    def blocks(info, t, widths, rank=64, itemsize=2):
        e = configs.expand_config(info, t, sum(widths), rank, itemsize, widths=widths)
        if e.block_n == 64 and e.col_blocks == 16:
            base = configs.expand_config(info, t, sum(widths), rank, itemsize)
            assert e == replace(base, col_blocks=16) and base.col_blocks == 8
        return e.col_blocks

    qkv = (4096, 1024, 1024)
    assert blocks(H100, 4096, qkv) == 16  # 64 tiles x 6 groups = 384
    assert blocks(H100, 3072, qkv) == 16  # 288
    assert blocks(H100, 5632, qkv) == 16  # 528
    assert blocks(H100, 2560, qkv) == 8  # 240: half a wave or less
    assert blocks(H100, 5696, qkv) == 8  # 534: a second wave
    assert blocks(H100, 8192, qkv) == 8 and blocks(H100, 2048, qkv) == 8
    assert blocks(H100, 4096, (4096,)) == 8  # 256
    assert blocks(H100, 6272, (4096,)) == 16  # 392, not wide (196 spans < 198)
    assert blocks(H100, 8192, (4096,)) == 16 and configs.expand_config(
        H100, 8192, 4096, 64, 2, widths=(4096,)).block_n == 128  # the wide rule first
    assert blocks(H100, 4096, qkv, rank=32) != 16 and blocks(H100, 4096, qkv, rank=128) == 8
    assert blocks(H100, 4096, qkv, itemsize=4) == 8
    assert blocks(A100, 4096, qkv) == 8 and blocks(MI300X, 4096, qkv) != 16
    assert configs.expand_config(H100, 4096, 6144, 64, 2).col_blocks == 8  # no widths


def test_shrink_wave_fit_rule():
    """add_lora's prefill shrink at ranks 33-64 with several rank blocks a tile (H100 /
    H200): (64-token tiles, 1 split), (64, 2) or (128, 2), whichever fills its last wave
    best at 3 / 2 programs a unit (earlier on ties); the public (atomic) shrink, other
    ranks, one rank block and other families keep the older rules."""
    from lora_dispatch.devices import configs

    def bm_split(info, t, rank=64, slices=3, atomic=False, k=4096):
        c = configs.shrink_config(info, t, k, rank, 2, atomic=atomic, slices=slices)
        return c.block_m, c.split_k

    assert bm_split(H100, 8192) == (64, 1)  # 384 of 396 slots
    assert bm_split(H100, 6144) == (64, 1)  # 288 / 396 beats 288 / 528
    assert bm_split(H100, 4096) == (64, 2)  # 384 / 396
    assert bm_split(H100, 3072) == (64, 2)  # 288 / 396
    assert bm_split(H100, 5120) == (128, 2)  # 240 / 264 beats 480 / 792 and 240 / 396
    assert bm_split(H100, 5632) == (128, 2)  # 264 / 264
    assert bm_split(H100, 5120, rank=48) == (128, 2)
    assert bm_split(H100, 5120, rank=128) == (64, 1)
    assert bm_split(H100, 5120, rank=32)[0] == 64
    assert bm_split(H100, 5120, slices=1) == (64, 2)  # one rank block a tile
    assert bm_split(H100, 5120, slices=2) == (64, 2)  # gate_up: 320 / 396
    assert bm_split(H100, 5120, atomic=True)[0] == 64
    assert bm_split(H100, 2048)[0] == 64
    assert bm_split(A100, 5120)[0] == 64 and bm_split(MI300X, 5120)[0] == 64


def test_expand_prefetch_rule():
    """The out prefetch: on at T <= 64 up to rank 32 (one-stage single blocks of 64 or 128
    columns) except the 256-column gate_up decode, off at T=256 (256-column blocks up to
    rank 32) and T <= 1024 (two stages, two blocks), on above for ranks above 32 only."""
    from lora_dispatch.devices import configs

    for t in (1, 16, 64, 256, 1024, 2048, 4096, 8192):
        for n, rank in ((4096, 16), (6144, 16), (4096, 64), (6144, 64), (28672, 16)):
            e = configs.expand_config(H100, t, n, rank, 2)
            if t <= 64 and n >= 16384 or t == 256:
                want = False
            elif t <= 64:
                want = rank <= 32
            else:
                want = t > 1024 and rank > 32
            assert e.prefetch == want, (t, n, rank, e)
    g16, g64 = (configs.expand_config(H100, 16, 28672, r, 2) for r in (16, 64))
    assert (g16.block_n, g16.num_stages, g16.col_blocks) == (256, 2, 1)  # decode gate_up
    assert (g64.block_n, g64.num_stages, g64.col_blocks) == (64, 1, 2)
    # the public decode expand's column blocks: 64 at T=1, then 128 up to rank 32 (256 for
    # gate_up); ranks 33-64 below gate_up widths (a spill at 128) and rank loops keep 64
    for t, n, rank, want in ((1, 6144, 16, (16, 64)), (16, 6144, 16, (16, 128)),
                             (64, 6144, 64, (16, 64)), (64, 28672, 16, (16, 256)),
                             (64, 28672, 64, (16, 256)), (256, 6144, 16, (16, 256)),
                             (256, 28672, 16, (16, 256)), (256, 6144, 64, (32, 128)),
                             (16, 6144, 128, (16, 64))):
        e = configs.expand_config(H100, t, n, rank, 2)
        assert (e.block_m, e.block_n) == want, (t, n, rank, e)


def test_expand_reads_y_early_where_measured():
    """``y_early`` (``y`` read before the rank is known): decode expands over fewer than 8
    partial products, prefill tiles with a 64-wide rank step (the 2048-column rank-64 tiling
    included); not over 8 partials, nor rank-16 / rank-32 prefill tiles."""
    from lora_dispatch.devices import configs

    for dev in (H100, A100, MI300X):
        for t in (1, 16, 64, 256):
            for rank in (16, 64):
                assert configs.expand_config(dev, t, 6144, rank, 2).y_early, (t, rank)
                assert configs.expand_config(dev, t, 28672, rank, 2, partials=4).y_early
                assert not configs.expand_config(dev, t, 6144, rank, 2, partials=8).y_early
        for t in (2048, 8192):
            for n, widths in ((6144, (4096, 1024, 1024)), (28672, (14336, 14336)),
                              (4096, (4096,))):
                for rank, want in ((16, False), (32, False), (64, True)):
                    c = configs.expand_config(dev, t, n, rank, 2, widths=widths, partials=2)
                    assert c.y_early is want, (t, n, rank, c)


def test_decode_expand_over_partials_takes_two_column_blocks():
    """An expand that sums split-K partial products (add_lora) at T <= 256 walks two column
    blocks a program (rank 16: 16x64, prefetched; rank 64: 16x64 in 2 stages up to T=16,
    16x128 at T=64, 32x128 at T=256; rank loops, rank 128: 16x128 at T=16 / 64, one
    16x128 block at T = 65-256, where 32x128 spilled); the public expand, the 256-column
    gate_up decode tiling, rank loops at T=1 and prefill keep theirs. The decode workspace
    shrink takes 8 K splits up to T=16 at every rank, at most 2 for rank loops above T=64."""
    from lora_dispatch.devices import configs

    for t in (1, 16, 64, 256):
        for rank in (16, 64):
            one = configs.expand_config(H100, t, 6144, rank, 2)
            many = configs.expand_config(H100, t, 6144, rank, 2, partials=8)
            assert one.col_blocks == 1, (t, rank, one)
            got = (many.block_m, many.block_n, many.col_blocks, many.prefetch)
            if rank == 16:
                want = (16, 64, 2, True)
            else:
                want = (16, 64, 2, False) if t <= 16 else (
                    (16 if t <= 64 else 32), 128, 2, False)
            assert got == want, (t, rank, many)
            assert configs.expand_config(H100, t, 6144, rank, 2, partials=1) == one
            split = configs.shrink_config(H100, t, 4096, rank, 2, atomic=False, slices=3).split_k
            assert split == (8 if t <= 16 or (rank <= 16 and t <= 64) else 4), (t, rank)
    for t, n, rank in ((16, 28672, 16), (16, 28672, 64), (1, 6144, 128), (2048, 6144, 16),
                       (1024, 6144, 64)):
        assert (configs.expand_config(H100, t, n, rank, 2, partials=4)
                == configs.expand_config(H100, t, n, rank, 2)), (t, n, rank)
    for t in (16, 64):  # rank loops: two 128-column blocks
        c = configs.expand_config(H100, t, 6144, 128, 2, partials=4)
        assert (c.block_m, c.block_n, c.col_blocks, c.block_r) == (16, 128, 2, 64), (t, c)
    for t, n in ((65, 6144), (128, 6144), (256, 6144), (256, 28672)):  # then one, two splits
        c = configs.expand_config(H100, t, n, 128, 2, partials=2)
        assert (c.block_m, c.block_n, c.col_blocks, c.block_r, c.num_warps) == \
            (16, 128, 1, 64, 4), (t, n, c)
        assert configs.expand_config(H100, t, n, 128, 2).block_m == 32  # public: 32x128
        for slices in (1, 2, 3):
            assert configs.shrink_config(H100, t, 4096, 128, 2, atomic=False,
                                         slices=slices).split_k <= 2, (t, slices)
    assert configs.shrink_config(H100, 64, 4096, 128, 2, atomic=False, slices=3).split_k == 4


def test_decode_plans_take_the_low_rank_path():
    """Decode configs (T <= 256; add_lora's expand over partials below rank loops T <= 64)
    whose rank box is above ``LOW_RANK`` give tiles of ranks up to it a narrower path, and
    those up to ``MID_RANK`` a second one where the box is above that too (public and
    add_lora's, every family); rank-16 boxes and prefill do not. Plans pass them as ``RLOW``
    / ``RMID`` where they fit: not past the box, not with the public shrink's own zeros
    (``FILL``, one K split)."""
    from lora_dispatch.devices import configs
    from lora_dispatch.kernels.triton import launch as L

    low = configs.LOW_RANK
    for info in (H100, A100, MI300X):
        for t in (1, 16, 64, 256, 1024, 2048, 8192):
            for rank in (8, 16, 32, 64, 128):
                want = low if t <= 256 and rank > low else 0
                mid = configs.MID_RANK if want and rank > configs.MID_RANK else 0
                for atomic in (True, False):
                    sc = configs.shrink_config(info, t, 4096, rank, 2, atomic, slices=3)
                    got = (sc.low_rank, sc.mid_rank)
                    assert got == ((want, mid) if sc.rank_blocks == 1 else (0, 0)), (t, rank, sc)
                for partials in (1, 4):
                    ec = configs.expand_config(info, t, 6144, rank, 2, partials=partials)
                    top = 64 if partials > 1 and rank <= 64 else 256
                    got = (ec.low_rank, ec.mid_rank)
                    assert got == ((want, mid) if t <= top else (0, 0)), (t, rank, partials, ec)
    w = ld.LoRAWeights(4, 4096, (4096, 1024, 1024), 64, dtype=torch.float16)
    p = L._two_pass_plan(w, 16)
    assert p.shrink.meta["RLOW"] == p.expand.meta["RLOW"] == low
    assert p.shrink.meta["RMID"] == p.expand.meta["RMID"] == configs.MID_RANK
    assert L._two_pass_plan(w, 16, cap=32).shrink.meta["RMID"] == 0  # box 32: one path
    assert L._two_pass_plan(w, 16, cap=32).shrink.meta["RLOW"] == low
    assert L._two_pass_plan(w, 16, cap=16).shrink.meta["RLOW"] == 0
    assert L._two_pass_plan(w, 16, cap=16).expand.meta["RLOW"] == 0
    assert L._two_pass_plan(w, 2048).shrink.meta["RLOW"] == 0
    assert L._shrink_plan(w, 16, atomic=True, split_k=1).meta["RLOW"] == 0  # FILL
    assert L._shrink_plan(w, 16, atomic=True, split_k=1, fill=False).meta["RLOW"] == low
    w16 = ld.LoRAWeights(4, 4096, (4096,), 16, dtype=torch.float16)
    assert L._expand_plan(w16, 16, 1).meta["RLOW"] == 0


def test_public_decode_shrink_stages():
    """The public (atomic) shrink pipelines 3 K steps at 1 < T <= 64, 4 elsewhere; the
    workspace shrink keeps 4."""
    from lora_dispatch.devices import configs

    for t in (1, 2, 16, 64, 256):
        pub = configs.shrink_config(H100, t, 4096, 16, 2, atomic=True)
        ws = configs.shrink_config(H100, t, 4096, 16, 2, atomic=False, slices=3)
        assert pub.num_stages == (3 if 1 < t <= 64 else 4), (t, pub)
        assert ws.num_stages == 4 and (pub.block_k, ws.block_k) == (128, 128), (t, ws)


def test_add_lora_plan_expands_with_its_shrink_split(monkeypatch):
    """``add_lora``'s expand plan is configured for the partial products its shrink writes
    (planned as on an H100)."""
    from lora_dispatch.kernels.triton import launch as L

    monkeypatch.setattr(L, "describe", lambda device: H100)
    w = ld.LoRAWeights(4, 4096, (4096, 1024, 1024), 16, dtype=torch.bfloat16)
    p = L.plan_for("add", w, 16, "two_pass")
    assert p.shrink.split > 1 and p.expand.meta["SPLIT"] == p.shrink.split
    assert p.expand.meta["NCOL"] == 2 and p.expand.meta["BN"] == 64
    assert L.plan_for("expand", w, 16).meta["NCOL"] == 1


def test_tma_env(monkeypatch):
    from lora_dispatch.devices import configs

    monkeypatch.delenv(configs.ENV_TMA, raising=False)
    assert not configs.shrink_tma(H100, 8192), "auto: off until a family measures faster"
    assert not configs.shrink_tma(A100, 8192)
    monkeypatch.setenv(configs.ENV_TMA, "1")
    assert configs.shrink_tma(A100, 1)
    monkeypatch.setenv(configs.ENV_TMA, "0")
    assert not configs.shrink_tma(H100, 8192)
    monkeypatch.setenv(configs.ENV_TMA, "on")
    with pytest.raises(ValueError, match=configs.ENV_TMA):
        configs.shrink_tma(H100, 8192)


def test_shrink_ticket_env(monkeypatch):
    """LORA_DISPATCH_SHRINK_TICKET: automatic up to 1024 tokens (eager decode and mid-size
    prefill, measured on the H200's and H100's hosts and GPUs), 1 everywhere, 0 never, other
    values name the variable."""
    from lora_dispatch.devices import configs

    monkeypatch.delenv(configs.ENV_TICKET, raising=False)
    assert configs.shrink_ticket(H100, 1) and configs.shrink_ticket(A100, 256)
    assert configs.shrink_ticket(H100, 1024) and not configs.shrink_ticket(H100, 1025)
    monkeypatch.setenv(configs.ENV_TICKET, "1")
    assert configs.shrink_ticket(H100, 8192)
    monkeypatch.setenv(configs.ENV_TICKET, "0")
    assert not configs.shrink_ticket(H100, 1)
    monkeypatch.setenv(configs.ENV_TICKET, "yes")
    with pytest.raises(ValueError, match=configs.ENV_TICKET):
        configs.shrink_ticket(H100, 1)


def test_pdl_rule(monkeypatch):
    """LORA_DISPATCH_PDL: automatic on CUDA 9.0+ with Triton 3.4+ outside the interpreter,
    off elsewhere; 0 turns it off, 1 raises where it cannot run, other values name the
    variable."""
    from lora_dispatch.devices import configs

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(configs.ENV_PDL, raising=False)
    new_triton = tuple(int(v) for v in __import__("triton").__version__.split(".")[:2]) >= (3, 4)
    assert configs.pdl(H100) == new_triton
    for info in (A100, MI300X, TPU, CPU):
        assert not configs.pdl(info)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not configs.pdl(H100)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setenv(configs.ENV_PDL, "0")
    assert not configs.pdl(H100)
    monkeypatch.setenv(configs.ENV_PDL, "1")
    with pytest.raises(RuntimeError, match="LORA_DISPATCH_PDL=1"):
        configs.pdl(A100)
    monkeypatch.setenv(configs.ENV_PDL, "yes")
    with pytest.raises(ValueError, match="LORA_DISPATCH_PDL"):
        configs.pdl(H100)
