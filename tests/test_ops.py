"""Contract tests of add_lora / lora_shrink / lora_expand on every CPU backend."""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, make_weights, naive_delta, rel_err, untouched_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lora_dispatch as ld

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _base(t, n, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, n, generator=g).to(dtype)


def _x(t, k, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, k, generator=g).to(dtype)


def _check_add(base, x, w, batch, adapters, slots, dtype):
    out = base.clone()
    ret = ld.add_lora(out, x, w, batch)
    assert ret is out
    ref = naive_delta(x, w.out_features, adapters, slots)
    assert rel_err(out, base, ref) <= TOL[dtype]
    for i in untouched_rows(slots, adapters, x.shape[0]):
        assert torch.equal(_bits(out[i]), _bits(base[i])), f"row {i} has no adapter but changed"
    return out, ref


def _bits(t):
    return t.view({torch.float32: torch.int32}.get(t.dtype, torch.int16))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_ranks_fused_slices(backend, dtype, poison_empty):
    # slot ranks 1..max, slot 2 empty, slot 5 loaded then unloaded
    ranks = [1, 8, 0, 3, 16, 5, 7]
    w, adapters = make_weights(7, 96, (64, 24, 8), 16, ranks, dtype=dtype)
    w.unload(5)
    adapters.pop(5)
    slots = torch.tensor([0, -1, 1, 2, 3, 4, 5, 6, 4, -1, 0, 6, 6, 1, 3, 2, 5, 4])
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _x(len(slots), 96, dtype), _base(len(slots), 96, dtype)
    _check_add(base, x, w, batch, adapters, slots, dtype)

    y = ld.lora_shrink(x, w, batch)
    assert y.shape == (3, len(slots), 16) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    for i in untouched_rows(slots, adapters, len(slots)):
        assert (y[:, i] == 0).all()
    for s, (a_list, _, c) in adapters.items():
        r = a_list[0].shape[0]
        assert (y[:, slots == s, r:] == 0).all()
        ref = x[slots == s].double() @ a_list[1].double().T * c
        torch.testing.assert_close(y[1, slots == s, :r].double(), ref, rtol=2e-2, atol=2e-2)
    out = ld.lora_expand(y, w, batch, base.clone())
    ref = naive_delta(x, w.out_features, adapters, slots)
    assert rel_err(out, base, ref) <= TOL[dtype]


def test_shrink_then_expand_equals_add_lora(backend):
    w, adapters = make_weights(4, 64, (32, 32), 8, [8, 4, 2, 1])
    slots = torch.tensor([3, 2, 1, 0, -1, 0, 1])
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _x(7, 64, torch.float32), _base(7, 64, torch.float32)
    a = ld.add_lora(base.clone(), x, w, batch)
    b = ld.lora_expand(ld.lora_shrink(x, w, batch), w, batch, base.clone())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_per_slice_ranks_and_scalings_and_untargeted_slice(backend):
    w = ld.LoRAWeights(2, 32, (16, 8, 8), 8, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    a = [torch.randn(4, 32, generator=g), None, torch.randn(8, 32, generator=g)]
    b = [torch.randn(16, 4, generator=g), None, torch.randn(8, 8, generator=g)]
    w.load(1, a, b, [0.5, 1.0, 2.0])
    assert w.host_ranks[1] == 8
    slots = torch.tensor([1, -1, 1, 0])
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _x(4, 32, torch.float32), _base(4, 32, torch.float32)
    out = ld.add_lora(base.clone(), x, w, batch)
    ref = naive_delta(x, w.out_features, {1: (a, b, [0.5, 1.0, 2.0])}, slots)
    assert rel_err(out, base, ref) <= 1e-5
    assert torch.equal(out[:, 16:24], base[:, 16:24])


def test_single_tensor_forms(backend):
    # one A shared by all slices; one B [sum(out), r] split by slice
    w = ld.LoRAWeights(1, 16, (8, 4), 4, dtype=torch.float32)
    a = torch.randn(4, 16)
    b = torch.randn(12, 4)
    w.load(0, a, b, 1.0)
    x, base = torch.randn(3, 16), torch.zeros(3, 12)
    out = ld.add_lora(base.clone(), x, w, ld.LoRABatch.from_token_adapters([0, 0, -1]))
    ref = x.double() @ a.double().T @ b.double().T
    torch.testing.assert_close(out[:2].double(), ref[:2], rtol=1e-5, atol=1e-5)
    assert (out[2] == 0).all()


def test_segments_equal_tokens(backend):
    w, adapters = make_weights(5, 48, (40,), 8, [8, 0, 3, 6, 1])
    lens, seq_slots = [3, 0, 5, 1, 4], [2, 4, -1, 0, 3]
    sb = ld.LoRABatch.from_segments(lens, seq_slots)
    tok = [s for n, s in zip(lens, seq_slots) for _ in range(n)]
    tb = ld.LoRABatch.from_token_adapters(torch.tensor(tok))
    x, base = _x(len(tok), 48, torch.float32), _base(len(tok), 40, torch.float32)
    a = ld.add_lora(base.clone(), x, w, sb)
    b = ld.add_lora(base.clone(), x, w, tb)
    assert torch.equal(a, b)
    ref = naive_delta(x, (40,), adapters, tok)
    assert rel_err(a, base, ref) <= 1e-5


def test_static_batch_refilled(backend):
    w, adapters = make_weights(6, 40, (24, 16), 8, [2, 8, 0, 5, 1, 7])
    batch = ld.LoRABatch.empty(16)
    t = 12
    g = torch.Generator().manual_seed(7)
    for it in range(6):
        n = int(torch.randint(0, t + 1, (1,), generator=g))
        slots = torch.randint(-1, 6, (n,), generator=g)
        batch.update_(slots if it % 2 else slots.tolist())
        x, base = _x(t, 40, torch.float32, seed=it), _base(t, 40, torch.float32, seed=it)
        full = slots.tolist() + [-1] * (t - n)
        out, _ = _check_add(base, x, w, batch, adapters, full, torch.float32)


def test_empty_batches(backend):
    w, adapters = make_weights(2, 16, (8,), 4, [4, 2])
    b0 = ld.LoRABatch.from_token_adapters(torch.zeros(0, dtype=torch.int64))
    x0, out0 = torch.randn(0, 16), torch.randn(0, 8)
    assert ld.add_lora(out0, x0, w, b0).shape == (0, 8)
    assert ld.lora_shrink(x0, w, b0).shape == (1, 0, 4)
    # every token without adapter: nothing changes
    b = ld.LoRABatch.from_token_adapters(torch.full((5,), -1))
    base = _base(5, 8, torch.float32)
    assert torch.equal(ld.add_lora(base.clone(), torch.randn(5, 16), w, b), base)
    # static batch never updated
    s = ld.LoRABatch.empty(8)
    assert torch.equal(ld.add_lora(base.clone(), torch.randn(5, 16), w, s), base)


def test_untouched_rows_keep_nan_and_bits(backend):
    w, _ = make_weights(3, 32, (16,), 4, [4, 2, 1], dtype=torch.bfloat16)
    slots = torch.tensor([0, -1, 2, -1, 1])
    base = _base(5, 16, torch.bfloat16)
    base[1] = float("nan")
    base[3, :4] = -0.0
    out = ld.add_lora(
        base.clone(), _x(5, 32, torch.bfloat16), w, ld.LoRABatch.from_token_adapters(slots)
    )
    assert torch.isnan(out[1]).all()
    assert torch.equal(_bits(out[3]), _bits(base[3]))
    assert torch.isfinite(out[[0, 2, 4]]).all()


def test_odd_sizes_and_strided_views(backend):
    k, outs = 1000, (200, 24, 8)
    w, adapters = make_weights(4, k, outs, 24, [24, 1, 0, 9], dtype=torch.float16)
    slots = torch.tensor([0, 3, 1, -1, 0, 3, 2])
    batch = ld.LoRABatch.from_token_adapters(slots)
    big_x = _x(7, k + 3, torch.float16)[:, 3:]  # misaligned, row stride k+3
    big_out = _base(14, 232 + 5, torch.float16)
    base_view = big_out[::2, 5:]  # every other row, offset columns
    base = base_view.clone()
    ld.add_lora(base_view, big_x, w, batch)
    ref = naive_delta(big_x, outs, adapters, slots)
    assert rel_err(base_view, base, ref) <= TOL[torch.float16]
    assert torch.equal(big_out[1::2], _base(14, 237, torch.float16)[1::2])
    assert torch.equal(big_out[::2, :5], _base(14, 237, torch.float16)[::2, :5])


def test_base_out_dtype_may_differ(backend):
    w, adapters = make_weights(2, 32, (16,), 4, [4, 3], dtype=torch.bfloat16)
    slots = torch.tensor([1, 0, -1])
    x, base = _x(3, 32, torch.bfloat16), _base(3, 16, torch.float32)
    out = ld.add_lora(base.clone(), x, w, ld.LoRABatch.from_token_adapters(slots))
    assert rel_err(out, base, naive_delta(x, (16,), adapters, slots)) <= TOL[torch.bfloat16]


def test_128_adapters(backend):
    ranks = [(s % 16) + 1 if s % 7 else 0 for s in range(128)]
    w, adapters = make_weights(128, 64, (32, 16), 16, ranks, dtype=torch.float32)
    g = torch.Generator().manual_seed(11)
    slots = torch.randint(-1, 128, (300,), generator=g)
    batch = ld.LoRABatch.from_token_adapters(slots)
    x, base = _x(300, 64, torch.float32), _base(300, 48, torch.float32)
    _check_add(base, x, w, batch, adapters, slots, torch.float32)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    num_slots=st.integers(1, 9),
    k=st.integers(1, 70),
    outs=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    max_rank=st.integers(1, 12),
    t=st.integers(0, 40),
    dtype=st.sampled_from(DTYPES),
)
def test_random_cases(backend, data, num_slots, k, outs, max_rank, t, dtype):
    ranks = data.draw(st.lists(st.integers(0, max_rank), min_size=num_slots, max_size=num_slots))
    seed = data.draw(st.integers(0, 2**16))
    w, adapters = make_weights(num_slots, k, tuple(outs), max_rank, ranks, dtype=dtype, seed=seed)
    slots = data.draw(st.lists(st.integers(-1, num_slots - 1), min_size=t, max_size=t))
    use_static = data.draw(st.booleans())
    if use_static:
        batch = ld.LoRABatch.empty(t + data.draw(st.integers(0, 5)))
        batch.update_(slots)
    else:
        batch = ld.LoRABatch.from_token_adapters(torch.tensor(slots, dtype=torch.int64))
    x, base = _x(t, k, dtype, seed=seed), _base(t, sum(outs), dtype, seed=seed + 1)
    _check_add(base, x, w, batch, adapters, slots, dtype)


def test_masked_path_matches_grouped():
    """The sync-free formulation (used under torch.compile / graphs) equals the grouped one."""
    from lora_dispatch.kernels import reference
    from lora_dispatch.ops import _batch_args, _views, _weight_args

    w, adapters = make_weights(5, 40, (16, 8), 8, [8, 1, 0, 5, 3])
    slots = torch.tensor([4, 0, -1, 2, 3, 1, 1, 0])
    batch = ld.LoRABatch.from_token_adapters(slots)
    wv, bv = _views(*_weight_args(w), *_batch_args(batch))
    x, base = _x(8, 40, torch.float32), _base(8, 24, torch.float32)
    a, b = base.clone(), base.clone()
    reference.add_lora(a, x, w, batch)
    reference.add_lora(b, x, wv, bv)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reference.shrink(x, w, batch), reference.shrink(x, wv, bv))
