"""torch.compile(fullgraph=True) traces through the ops via the torch.library custom ops."""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, make_weights, naive_delta, rel_err

import lora_dispatch as ld


def test_custom_ops_registered_with_fake_impls():
    for name in ("add_lora", "lora_shrink", "lora_expand"):
        assert hasattr(torch.ops.lora_dispatch, name)
    w, _ = make_weights(3, 16, (8, 4), 4, [4, 2, 1])
    b = ld.LoRABatch.from_token_adapters([0, 2, -1])
    from lora_dispatch.ops import _batch_args, _weight_args

    x = torch.randn(3, 16)
    torch.library.opcheck(
        torch.ops.lora_dispatch.lora_shrink.default, (x, *_weight_args(w), *_batch_args(b))
    )
    torch.library.opcheck(
        torch.ops.lora_dispatch.add_lora.default,
        (torch.randn(3, 12), x, *_weight_args(w), *_batch_args(b)),
    )


def test_fullgraph_add_lora_one_compilation_for_many_batches():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    w, adapters = make_weights(6, 32, (16, 8), 8, [8, 1, 0, 4, 6, 2])
    cnt = CompileCounter()

    def layer(base, x, batch):
        y = ld.lora_shrink(x, w, batch)
        out = ld.lora_expand(y, w, batch, base.clone())
        return ld.add_lora(out, x, w, batch) * 1.0

    f = torch.compile(layer, backend=cnt, fullgraph=True, dynamic=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        slots = torch.randint(-1, 6, (10,), generator=g)
        batch = ld.LoRABatch.from_token_adapters(slots)
        x, base = torch.randn(10, 32, generator=g), torch.randn(10, 24, generator=g)
        out = f(base, x, batch)
        ref = 2 * naive_delta(x, w.out_features, adapters, slots)
        assert rel_err(out, base, ref) <= TOL[torch.float32]
    assert cnt.frame_count == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inductor_fullgraph(dtype):
    torch._dynamo.reset()
    w, adapters = make_weights(4, 32, (16,), 8, [8, 2, 0, 5], dtype=dtype)
    slots = torch.tensor([3, 0, -1, 1, 3])
    batch = ld.LoRABatch.from_token_adapters(slots)
    f = torch.compile(lambda o, x: ld.add_lora(o, x, w, batch), fullgraph=True)
    x, base = torch.randn(5, 32).to(dtype), torch.randn(5, 16).to(dtype)
    out = f(base.clone(), x)
    assert rel_err(out, base, naive_delta(x, (16,), adapters, slots)) <= TOL[dtype]
