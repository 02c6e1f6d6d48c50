"""Every bad input of DESIGN.md: ValueError/TypeError naming the argument, nothing written."""

from __future__ import annotations

import pytest
import torch
from helpers import make_weights

import lora_dispatch as ld


@pytest.fixture
def setup():
    w, _ = make_weights(4, 32, (16, 8), 8, [8, 4, 0, 2])
    batch = ld.LoRABatch.from_token_adapters(torch.tensor([0, 1, -1, 3]))
    x = torch.randn(4, 32)
    base = torch.randn(4, 24)
    return w, batch, x, base


def _unchanged(base, fn, exc, match):
    before = base.clone()
    with pytest.raises(exc, match=match):
        fn()
    assert torch.equal(base, before)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda w, b, x, o: (w, b, x.numpy(), o), TypeError, "x must be a Tensor"),
        (lambda w, b, x, o: (w, b, x[:, :31], o), ValueError, "x must be"),
        (lambda w, b, x, o: (w, b, x[None], o), ValueError, "x must be"),
        (lambda w, b, x, o: (w, b, x.half(), o), TypeError, "x has dtype"),
        (lambda w, b, x, o: (w, b, x.to("meta"), o), ValueError, "x is on"),
        (lambda w, b, x, o: (w, b, x, o[:, :23]), ValueError, "base_out must have shape"),
        (lambda w, b, x, o: (w, b, x, o[:3]), ValueError, "base_out must have shape"),
        (lambda w, b, x, o: (w, b, x, o.to(torch.int32)), TypeError, "base_out must be one of"),
        (lambda w, b, x, o: (w, b, x, [1.0]), TypeError, "base_out must be a Tensor"),
        (lambda w, b, x, o: ("w", b, x, o), TypeError, "w must be a LoRAWeights"),
        (lambda w, b, x, o: (w, [0, 1, -1, 3], x, o), TypeError, "batch must be a LoRABatch"),
        (
            lambda w, b, x, o: (w, ld.LoRABatch.from_token_adapters([0, 1]), x, o),
            ValueError,
            "batch holds 2 tokens",
        ),
        (
            lambda w, b, x, o: (w, ld.LoRABatch.from_token_adapters([0, 1, -1, 4]), x, o),
            ValueError,
            "slot 4",
        ),
    ],
)
def test_add_lora_rejects(setup, mutate, exc, match):
    w, b, x, o = mutate(*setup)
    base = setup[3]
    target = o if isinstance(o, torch.Tensor) and o.data_ptr() == base.data_ptr() else base
    _unchanged(target, lambda: ld.add_lora(o, x, w, b), exc, match)


def test_batch_routes_more_tokens_than_x(setup):
    w, _, x, base = setup
    s = ld.LoRABatch.empty(8)
    s.update_([0, 1, 2, 3, 0, 1])
    _unchanged(base, lambda: ld.add_lora(base, x, w, s), ValueError, "routes 6 tokens")


def test_device_mismatch_of_batch(setup):
    w, _, x, base = setup
    meta_batch = ld.LoRABatch.empty(4, device="meta")
    _unchanged(base, lambda: ld.add_lora(base, x, w, meta_batch), ValueError, "batch is on")


def test_shrink_expand_reject(setup):
    w, b, x, base = setup
    with pytest.raises(ValueError, match="x must be"):
        ld.lora_shrink(x[:, :5], w, b)
    y = ld.lora_shrink(x, w, b)
    _unchanged(base, lambda: ld.lora_expand(y[:1], w, b, base), ValueError, "y must be")
    _unchanged(base, lambda: ld.lora_expand(y[:, :, :4], w, b, base), ValueError, "y must be")
    _unchanged(base, lambda: ld.lora_expand(y.int(), w, b, base), TypeError, "y must be floating")
    _unchanged(base, lambda: ld.lora_expand(y, w, b, base[:, :10]), ValueError, "base_out")
    _unchanged(
        base, lambda: ld.lora_expand(y.tolist(), w, b, base), TypeError, "y must be a Tensor"
    )


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((9, torch.randn(4, 32), torch.randn(24, 4)), ValueError, "slot must be in"),
        (("0", torch.randn(4, 32), torch.randn(24, 4)), TypeError, "slot must be an int"),
        ((0, torch.randn(4, 31), torch.randn(24, 4)), ValueError, "lora_a for slice 0"),
        ((0, torch.randn(4, 32), torch.randn(23, 4)), ValueError, "lora_b as one tensor"),
        ((0, [torch.randn(4, 32)] * 3, [torch.randn(16, 4)] * 3), ValueError, "has 3 entries"),
        (
            (0, [torch.randn(4, 32)] * 2, [torch.randn(16, 4), torch.randn(8, 5)]),
            ValueError,
            "lora_b for slice 1",
        ),
        ((0, torch.randn(9, 32), torch.randn(24, 9)), ValueError, "max_rank=8"),
        ((0, torch.randn(4, 32).int(), torch.randn(24, 4)), TypeError, "floating point"),
        ((0, torch.randn(32), torch.randn(24, 4)), ValueError, "must be 2-D"),
        ((0, "a", torch.randn(24, 4)), TypeError, "lora_a must be a Tensor"),
        (
            (0, [torch.randn(4, 32), None], [torch.randn(16, 4), torch.randn(8, 4)]),
            ValueError,
            "both be given or both None",
        ),
    ],
)
def test_load_rejects_and_writes_nothing(setup, args, exc, match):
    w = setup[0]
    before = (w.lora_a.clone(), w.lora_b.clone(), w.ranks.clone(), list(w.host_ranks))
    with pytest.raises(exc, match=match):
        w.load(*args)
    assert torch.equal(w.lora_a, before[0]) and torch.equal(w.lora_b, before[1])
    assert torch.equal(w.ranks, before[2]) and w.host_ranks == before[3]


@pytest.mark.parametrize(
    "scaling, exc", [("x", TypeError), ([1.0], TypeError), (float("nan"), ValueError)]
)
def test_load_rejects_scaling(setup, scaling, exc):
    w = setup[0]
    with pytest.raises(exc, match="scaling"):
        w.load(1, torch.randn(4, 32), torch.randn(24, 4), scaling)
    assert w.host_ranks[1] == 4


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(num_slots=0), ValueError, "num_slots"),
        (dict(in_features=2.0), TypeError, "in_features"),
        (dict(out_features=()), TypeError, "out_features"),
        (dict(out_features=(4, -1)), ValueError, r"out_features\[1\]"),
        (dict(max_rank=0), ValueError, "max_rank"),
        (dict(dtype=torch.int8), TypeError, "dtype"),
    ],
)
def test_weights_constructor_rejects(kwargs, exc, match):
    args = dict(num_slots=2, in_features=8, out_features=4, max_rank=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ld.LoRAWeights(**args)


@pytest.mark.parametrize(
    "fn, exc, match",
    [
        (lambda: ld.LoRABatch.from_token_adapters(torch.tensor([0.5])), TypeError, "integer dtype"),
        (
            lambda: ld.LoRABatch.from_token_adapters(torch.zeros(2, 2, dtype=torch.int32)),
            ValueError,
            "1-D",
        ),
        (lambda: ld.LoRABatch.from_token_adapters([0, -2]), ValueError, ">= -1"),
        (lambda: ld.LoRABatch.from_token_adapters("01"), TypeError, "token_slots"),
        (lambda: ld.LoRABatch.from_segments([1, 2], [0]), ValueError, "same length"),
        (lambda: ld.LoRABatch.from_segments([1, -2], [0, 1]), ValueError, "seq_lens must be >= 0"),
        (lambda: ld.LoRABatch.from_segments([1, 2], [0, -3]), ValueError, ">= -1"),
        (lambda: ld.LoRABatch.empty(-1), ValueError, "max_tokens"),
        (lambda: ld.LoRABatch.empty(2).update_([0, 1, 2]), ValueError, "at most 2"),
        (lambda: ld.LoRABatch.from_token_adapters([0]).update_([0]), TypeError, "static batch"),
        (lambda: ld.LoRABatch(), TypeError, "from_token_adapters"),
    ],
)
def test_batch_rejects(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_static_batch_update_rejects_without_changing(setup):
    s = ld.LoRABatch.empty(4)
    s.update_([1, 0])
    before = s.token_slots.clone()
    with pytest.raises(ValueError):
        s.update_([0, 1, 2, 3, 4])
    with pytest.raises(ValueError):
        s.update_([0, -5])
    assert torch.equal(s.token_slots, before)
