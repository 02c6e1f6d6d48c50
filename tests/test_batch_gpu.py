"""Static batches on the GPU: refilling from the host never waits for queued GPU work."""

from __future__ import annotations

import pytest
import torch

import lora_dispatch as ld

pytestmark = pytest.mark.gpu


def test_update_from_host_does_not_wait_for_the_stream():
    b = ld.LoRABatch.empty(64, device="cuda")
    b.update_([0] * 8)  # warm: first event, pinned buffers touched
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda._sleep(1_000_000_000)  # keep the stream busy (~0.5 s of GPU spin)
    b.update_([1, -1, 2])
    b.update_(torch.tensor([3, 3, -1, 0]))  # the other staging buffer: still no wait
    assert not stream.query(), "update_ waited for work queued on the stream"
    torch.cuda.synchronize()
    assert b.token_slots[:5].tolist() == [3, 3, -1, 0, -1]
    assert b.max_slot == 3 and b.num_tokens == 4


def test_staging_buffers_reused_safely():
    """Many back-to-back refills (staging buffers reused) leave exactly the last routing."""
    b = ld.LoRABatch.empty(32, device="cuda")
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        slots = torch.randint(-1, 5, (int(torch.randint(0, 33, (1,), generator=g)),),
                              generator=g)
        b.update_(slots)
    ref = ld.LoRABatch.from_token_adapters(slots.cuda())
    torch.cuda.synchronize()
    n = slots.numel()
    assert torch.equal(b.token_slots[:n].cpu(), ref.token_slots.cpu())
    assert (b.token_slots[n:] == -1).all()
    assert torch.equal(b.sorted_tokens[:n].cpu(), ref.sorted_tokens[:n].cpu())


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_graph_replay_after_refill_and_reload(backend, monkeypatch):
    """A graph captured once stays right after update_ and after reloading an adapter."""
    import sys

    from lora_dispatch import devices

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from helpers import TOL, make_weights, naive_delta, random_adapter, rel_err

    monkeypatch.setenv("LORA_DISPATCH_BACKEND", backend)
    devices.reset()
    dt = torch.bfloat16
    w, adapters = make_weights(4, 256, (128, 64), 16, [16, 4, 8, 1], dtype=dt, device="cuda")
    t = 24
    batch = ld.LoRABatch.empty(t, device="cuda")
    x = torch.randn(t, 256, device="cuda").to(dt)
    base = torch.randn(t, 192, device="cuda").to(dt)
    out = base.clone()
    batch.update_([0] * t)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ld.add_lora(out.copy_(base), x, w, batch)  # warm-up (compiles kernels)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out.copy_(base)
        ld.add_lora(out, x, w, batch)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        slots = torch.randint(-1, 4, (t,), generator=gen).tolist()
        if step == 3:  # reload slot 1 with another rank (weights change in place)
            a, b = random_adapter(256, (128, 64), 12, gen)
            w.load(1, a, b, 0.75)
            adapters[1] = ([v.to(dt) for v in a], [v.to(dt) for v in b], 0.75)
        batch.update_(slots)
        g.replay()
        torch.cuda.synchronize()
        ref = naive_delta(x.cpu(), (128, 64), adapters, slots)
        assert rel_err(out, base, ref) <= TOL[dt], (backend, step)
