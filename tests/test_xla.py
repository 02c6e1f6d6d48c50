"""The XLA backend on the CPU (forced with LORA_DISPATCH_BACKEND=xla): contract and static graphs.

Every contract case runs with each formulation forced (``bgmv`` gather, ``masked`` dense)
and with the automatic choice, against a float64 loop over tokens. The compile tests show
that the traced graph depends on the token count only: one compilation for many adapter
mixes (new batches, adapters reloaded with other ranks).
"""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, make_weights, naive_delta, random_adapter, rel_err, untouched_rows

import lora_dispatch as ld
import lora_dispatch.devices as devices
from lora_dispatch.kernels import xla

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def xla_backend(monkeypatch):
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "xla")
    monkeypatch.delenv(xla.ENV_FORMULATION, raising=False)
    devices.reset()
    yield
    devices.reset()


@pytest.fixture(params=["bgmv", "masked", None], ids=["bgmv", "masked", "auto"])
def formulation(request, monkeypatch):
    monkeypatch.setattr(xla, "FORMULATION", request.param)
    return request.param


def _rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def _bits(t):
    return t.contiguous().view({torch.float32: torch.int32}.get(t.dtype, torch.int16))


def _check_add(base, x, w, batch, adapters, slots, dtype, tol=None):
    out = base.clone()
    assert ld.add_lora(out, x, w, batch) is out
    ref = naive_delta(x, w.out_features, adapters, slots)
    err = rel_err(out, base, ref)
    assert err <= (tol or TOL[dtype]), err
    for i in untouched_rows(slots, adapters, x.shape[0]):
        assert torch.equal(_bits(out[i]), _bits(base[i])), f"row {i} has no adapter but changed"
    return out


def _check_shrink_expand(base, x, w, batch, adapters, slots, dtype):
    t = x.shape[0]
    y = ld.lora_shrink(x, w, batch)
    assert y.shape == (w.num_slices, t, w.max_rank) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    for i in untouched_rows(slots, adapters, t):
        assert (y[:, i] == 0).all(), f"token {i} has no adapter but y is non-zero"
    for s, (a_list, _, _) in adapters.items():
        r = max(a.shape[0] for a in a_list if a is not None)
        sel = torch.as_tensor(slots[:t]) == s
        assert (y[:, sel, r:] == 0).all(), f"slot {s}: y non-zero past its rank {r}"
    out = base.clone()
    assert ld.lora_expand(y, w, batch, out) is out
    ref = naive_delta(x, w.out_features, adapters, slots)
    assert rel_err(out, base, ref) <= TOL[dtype]
    for i in untouched_rows(slots, adapters, t):
        assert torch.equal(_bits(out[i]), _bits(base[i]))


def test_backend_is_xla():
    w = ld.LoRAWeights(2, 8, 8, 2, dtype=torch.float32)
    sel = ld.ops.selection(w)
    assert sel.name == "xla" and sel.forced
    assert sel.impl is xla


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_ranks_fused_slices(dtype, formulation):
    # ranks 1..16, slot 2 empty, slot 5 loaded then unloaded; per-slice scalings
    ranks = [1, 8, 0, 3, 16, 5, 7]
    w, adapters = make_weights(7, 96, (64, 24, 8), 16, ranks, dtype=dtype,
                               scalings=[(0.5, 1.0, 2.0)] * 7)
    w.unload(5)
    adapters.pop(5)
    slots = torch.tensor([0, -1, 1, 2, 3, 4, 5, 6, 4, -1, 0, 6, 6, 1, 3, 2, 5, 4])
    batch = ld.LoRABatch.from_token_adapters(slots)
    t = len(slots)
    x, base = _rand((t, 96), dtype, 2), _rand((t, 96), dtype, 1)
    _check_add(base, x, w, batch, adapters, slots, dtype)
    _check_shrink_expand(base, x, w, batch, adapters, slots, dtype)
    # an untouched row keeps even a NaN bit for bit
    nan_base = base.clone()
    nan_base[1, 3] = float("nan")
    out = ld.add_lora(nan_base.clone(), x, w, batch)
    assert torch.equal(_bits(out[1]), _bits(nan_base[1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_slices_of_different_ranks(dtype, formulation):
    # per-slice ranks inside one slot (slot rank = max, smaller slices zero-padded),
    # and a slice not adapted at all
    g = torch.Generator().manual_seed(3)
    w = ld.LoRAWeights(3, 40, (24, 16, 8), 8, dtype=dtype)
    a, b = random_adapter(40, (24, 16, 8), 0, g, slice_ranks=(6, 2, 0))
    w.load(1, a, b, (1.5, 0.5, 3.0))
    a2, b2 = random_adapter(40, (24, 16, 8), 0, g, slice_ranks=(3, 8, 5))
    w.load(2, a2, b2, 0.75)
    cast = lambda ts: [t.to(dtype) if t is not None else None for t in ts]  # noqa: E731
    adapters = {1: (cast(a), cast(b), (1.5, 0.5, 3.0)), 2: (cast(a2), cast(b2), 0.75)}
    slots = torch.tensor([1, 2, 0, -1, 2, 1, 1, 2])
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _rand((8, 40), dtype, 4), _rand((8, 48), dtype, 5)
    _check_add(base, x, w, batch, adapters, slots, dtype)
    _check_shrink_expand(base, x, w, batch, adapters, slots, dtype)


@pytest.mark.parametrize("t", [1, 2, 3, 5, 17, 64, 129])
def test_odd_sizes(t, formulation):
    dtype = torch.float32
    w, adapters = make_weights(3, 33, (7, 13), 5, [5, 0, 2], dtype=dtype, seed=t)
    g = torch.Generator().manual_seed(t)
    slots = torch.randint(-1, 3, (t,), generator=g)
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _rand((t, 33), dtype, t), _rand((t, 20), dtype, t + 1)
    _check_add(base, x, w, batch, adapters, slots, dtype)
    _check_shrink_expand(base, x, w, batch, adapters, slots, dtype)


def test_all_tokens_without_adapter(formulation):
    w, adapters = make_weights(4, 32, (16,), 4, [4, 2, 0, 0])
    for slots in ([-1] * 6, [2, 3, 2, -1, 3, 3]):  # slot -1 only / empty slots only
        batch = ld.LoRABatch.from_token_adapters(slots)
        x, base = _rand((6, 32), torch.float32, 0), _rand((6, 16), torch.float32, 1)
        out = ld.add_lora(base.clone(), x, w, batch)
        assert torch.equal(_bits(out), _bits(base))
        assert (ld.lora_shrink(x, w, batch) == 0).all()


def test_no_adapter_loaded_at_all(formulation):
    w = ld.LoRAWeights(3, 16, (8, 8), 4, dtype=torch.bfloat16)
    batch = ld.LoRABatch.from_token_adapters([0, 1, 2, -1])
    base = _rand((4, 16), torch.bfloat16, 0)
    out = ld.add_lora(base.clone(), _rand((4, 16), torch.bfloat16, 1), w, batch)
    assert torch.equal(_bits(out), _bits(base))


def test_nonfinite_input_of_untouched_tokens_does_not_leak(formulation):
    w, adapters = make_weights(3, 24, (12,), 4, [4, 3, 2])
    slots = torch.tensor([0, -1, 1, -1, 2])
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _rand((5, 24), torch.float32, 0), _rand((5, 12), torch.float32, 1)
    x[1] = float("inf")
    x[3] = float("nan")
    out = base.clone()
    ld.add_lora(out, x, w, batch)
    assert torch.isfinite(out[[0, 2, 4]]).all()
    assert torch.equal(_bits(out[[1, 3]]), _bits(base[[1, 3]]))
    ref = naive_delta(x.nan_to_num(0, 0, 0), w.out_features, adapters, slots)
    assert rel_err(out, base, ref) <= 1e-3


def test_segments_match_tokens(formulation):
    w, adapters = make_weights(5, 48, (32, 16), 8, [8, 2, 0, 5, 1], dtype=torch.float16)
    seq_lens, seq_slots = [3, 0, 5, 2, 4, 1], [1, 4, -1, 3, 0, 2]
    seg = ld.LoRABatch.from_segments(seq_lens, seq_slots)
    slots = torch.repeat_interleave(torch.tensor(seq_slots), torch.tensor(seq_lens))
    tok = ld.LoRABatch.from_token_adapters(slots)
    t = int(sum(seq_lens))
    x, base = _rand((t, 48), torch.float16, 0), _rand((t, 48), torch.float16, 1)
    a = _check_add(base, x, w, seg, adapters, slots, torch.float16)
    b = ld.add_lora(base.clone(), x, w, tok)
    assert torch.equal(_bits(a), _bits(b))


def test_static_batch_refilled(formulation):
    dtype = torch.bfloat16
    w, adapters = make_weights(4, 64, (32, 32), 8, [8, 4, 1, 0], dtype=dtype)
    batch = ld.LoRABatch.empty(16)
    g = torch.Generator().manual_seed(0)
    for step, n in enumerate([16, 5, 0, 16, 9]):
        slots = torch.randint(-1, 4, (n,), generator=g)
        batch.update_(slots)
        x, base = _rand((16, 64), dtype, step), _rand((16, 64), dtype, step + 10)
        full = torch.cat([slots, torch.full((16 - n,), -1)])
        _check_add(base, x, w, batch, adapters, full, dtype)
        # fewer rows than the capacity: the first t tokens
        t = max(n, 1) if n else 0
        if t:
            _check_add(base[:t].clone(), x[:t].clone(), w, batch, adapters, full, dtype)


def test_empty_batch(formulation):
    w, _ = make_weights(2, 16, (8,), 4, [4, 2])
    batch = ld.LoRABatch.from_token_adapters(torch.zeros(0, dtype=torch.int32))
    x = torch.zeros(0, 16)
    base = torch.zeros(0, 8)
    assert ld.add_lora(base, x, w, batch) is base
    assert ld.lora_shrink(x, w, batch).shape == (1, 0, 4)
    # and the backend functions themselves on T = 0
    xla.add_lora(base, x, w, batch)
    assert xla.shrink(x, w, batch).shape == (1, 0, 4)
    xla.expand(torch.zeros(1, 0, 4), w, batch, base)


def test_base_out_dtype_differs_from_weights(formulation):
    w, adapters = make_weights(3, 32, (16,), 4, [4, 2, 3], dtype=torch.bfloat16)
    slots = torch.tensor([2, -1, 0, 1])
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _rand((4, 32), torch.bfloat16, 0), _rand((4, 16), torch.float32, 1)
    _check_add(base, x, w, batch, adapters, slots, torch.bfloat16)


def test_expand_masks_y_past_rank(formulation):
    # y past a slot's rank (or of a token without adapter) must not contribute
    w, adapters = make_weights(2, 16, (8, 8), 6, [3, 0])
    slots = torch.tensor([0, 1, -1, 0])
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _rand((4, 16), torch.float32, 0), _rand((4, 16), torch.float32, 1)
    y = ld.lora_shrink(x, w, batch)
    y[:, :, 3:] = 1e3
    y[:, 1:3] = 7.0
    out = ld.lora_expand(y, w, batch, base.clone())
    assert rel_err(out, base, naive_delta(x, w.out_features, adapters, slots)) <= 1e-3
    assert torch.equal(out[1:3], base[1:3])


def test_formulations_agree():
    w, _ = make_weights(6, 80, (40, 20, 20), 16, [16, 4, 0, 9, 1, 12], dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    slots = torch.randint(-1, 6, (37,), generator=g)
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _rand((37, 80), torch.float32, 0), _rand((37, 80), torch.float32, 1)
    outs, ys = [], []
    for f in xla.FORMULATIONS:
        xla.FORMULATION = f
        try:
            outs.append(xla.add_lora(base.clone(), x, w, batch) or None)
            o = base.clone()
            xla.add_lora(o, x, w, batch)
            outs[-1] = o
            ys.append(xla.shrink(x, w, batch))
        finally:
            xla.FORMULATION = None
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the choice
def test_choose_small_t_gathers_large_t_masks():
    for platform, model in xla.COST_MODELS.items():
        for nslots in (2, 8, 32):
            geo = (nslots, 4096, 6144, 16, 3)
            assert xla.choose(1, *geo, platform=platform) == "bgmv"
            picks = [xla.choose(t, *geo, platform=platform) for t in range(1, 2049)]
            # one switch point: bgmv below it, masked above, where the model says
            switch = picks.index("masked") + 1 if "masked" in picks else None
            assert all(p == "bgmv" for p in picks[: (switch or 2049) - 1])
            assert all(p == "masked" for p in picks[(switch or 2049) - 1 :])
            thr = model.threshold(nslots)
            if thr <= 2048:
                assert switch is not None and switch - 1 <= thr < switch + 1, (platform, thr)
            else:
                assert switch is None or switch >= 2048
        # few slots: dense wins well before prefill sizes
        assert xla.choose(4096, 4, 4096, 6144, 16, 3, platform=platform) == "masked"


def test_threshold_grows_with_slots():
    m = xla.COST_MODELS["cpu"]
    assert m.threshold(2) < m.threshold(8) <= m.threshold(32)


def test_force_formulation_env(monkeypatch):
    monkeypatch.setenv(xla.ENV_FORMULATION, "masked")
    assert xla.choose(1, 4, 64, 64, 8) == "masked"
    monkeypatch.setenv(xla.ENV_FORMULATION, "bgmv")
    assert xla.choose(10**6, 4, 64, 64, 8) == "bgmv"
    monkeypatch.setenv(xla.ENV_FORMULATION, "dense")
    with pytest.raises(ValueError, match="formulation"):
        xla.choose(1, 4, 64, 64, 8)


# --------------------------------------------------------------------------- one graph per T
def _mixes(w, nslots, k, outs, rmax, t, count, seed=0, adapters=None):
    """Yield (batch, adapters) for ``count`` different adapter mixes, reloading slots.

    ``adapters`` (what ``w`` holds, updated in place) carries over between calls."""
    g = torch.Generator().manual_seed(seed)
    adapters = {} if adapters is None else adapters
    for step in range(count):
        # reload one or two slots with a new rank (or empty them)
        for s in {step % nslots, (3 * step + 1) % nslots}:
            r = int(torch.randint(0, rmax + 1, (1,), generator=g))
            if r == 0:
                w.unload(s)
                adapters.pop(s, None)
                continue
            a, b = random_adapter(k, outs, r, g)
            c = float(torch.rand((), generator=g)) + 0.25
            w.load(s, a, b, c)
            adapters[s] = ([x.to(w.dtype) for x in a], [x.to(w.dtype) for x in b], c)
        slots = torch.randint(-1, nslots, (t,), generator=g)
        yield ld.LoRABatch.from_token_adapters(slots), dict(adapters), slots


@pytest.mark.parametrize("form", ["bgmv", "masked"])
def test_compiled_add_lora_compiles_once_for_many_mixes(form, monkeypatch):
    from torch._dynamo.testing import CompileCounter

    monkeypatch.setattr(xla, "FORMULATION", form)
    torch._dynamo.reset()
    cnt = CompileCounter()

    @torch.compile(fullgraph=True, dynamic=False, backend=cnt)
    def step(base, x, w, batch):
        return ld.add_lora(base, x, w, batch)

    nslots, k, outs, rmax, t = 6, 32, (16, 8), 8, 11
    w = ld.LoRAWeights(nslots, k, outs, rmax, dtype=torch.float32)
    seen = set()
    for i, (batch, adapters, slots) in enumerate(_mixes(w, nslots, k, outs, rmax, t, 24)):
        seen.add((tuple(slots.tolist()), tuple(w.host_ranks)))
        x, base = _rand((t, k), torch.float32, i), _rand((t, 24), torch.float32, i + 100)
        out = step(base.clone(), x, w, batch)
        ref = naive_delta(x, outs, adapters, slots)
        assert rel_err(out, base, ref) <= 1e-3
        for r in untouched_rows(slots, adapters, t):
            assert torch.equal(out[r], base[r])
    assert len(seen) >= 20
    assert cnt.frame_count == 1, f"{cnt.frame_count} compilations for one token count"

    # a static batch refilled in place: still the same graph
    sb = ld.LoRABatch.empty(t)
    for i in range(5):
        sb.update_(torch.randint(-1, nslots, (t,)))
        step(_rand((t, 24), torch.float32, i), _rand((t, k), torch.float32, i), w, sb)
    assert cnt.frame_count == 1
    torch._dynamo.reset()


@pytest.mark.parametrize("form", ["bgmv", "masked"])
def test_backend_traces_to_one_static_graph(form, monkeypatch):
    """Dynamo traces the backend's own Python (not the opaque custom op): no graph break,
    no data-dependent op, no guard on ranks or routing — one graph for every mix at one T,
    a second graph only for a second T."""
    from torch._dynamo.testing import CompileCounter

    monkeypatch.setattr(xla, "FORMULATION", form)
    torch._dynamo.reset()
    cnt = CompileCounter()

    @torch.compile(fullgraph=True, dynamic=False, backend=cnt)
    def step(base, x, w, batch):
        xla.add_lora(base, x, w, batch)
        return base, xla.shrink(x, w, batch)

    nslots, k, outs, rmax = 5, 24, (8, 8, 4), 6
    w = ld.LoRAWeights(nslots, k, outs, rmax, dtype=torch.bfloat16)
    held: dict = {}
    for t in (9, 4):
        mixes = _mixes(w, nslots, k, outs, rmax, t, 20, t, held)
        for i, (batch, adapters, slots) in enumerate(mixes):
            x = _rand((t, k), torch.bfloat16, i)
            base = _rand((t, 20), torch.bfloat16, i + 1)
            out, _ = step(base.clone(), x, w, batch)
            assert rel_err(out, base, naive_delta(x, outs, adapters, slots)) <= 1e-2
    assert cnt.frame_count == 2, f"{cnt.frame_count} graphs for 2 token counts"
    torch._dynamo.reset()
