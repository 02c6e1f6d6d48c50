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
