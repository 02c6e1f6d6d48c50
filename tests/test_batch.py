"""LoRABatch metadata: each routed token in exactly one tile of its slot, at every tile size."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lora_dispatch as ld
from lora_dispatch.batch import TILE_SIZES, max_tiles, tile_index


def _check_metadata(batch, slots, num_slots):
    t = len(slots)
    st_ = batch.sorted_tokens.tolist()
    assert sorted(st_) == list(range(batch.capacity))
    assert batch.token_slots[:t].tolist() == slots
    assert (batch.token_slots[t:] == -1).all()
    for bm in TILE_SIZES:
        tm = batch.tile_map[tile_index(bm)]
        assert tm.shape == (3, max_tiles(batch.capacity))
        grid = -(-t // bm) + min(t, num_slots)
        seen = []
        for j in range(tm.shape[1]):
            slot, start, end = tm[:, j].tolist()
            if slot < 0:
                continue
            assert j < grid, "a used tile lies beyond the static grid bound"
            assert 0 < end - start <= bm
            toks = st_[start:end]
            assert all(slots[i] == slot for i in toks)
            seen += toks
        routed = [i for i, s in enumerate(slots) if s >= 0]
        assert sorted(seen) == routed
        for t_ in {t, batch.capacity}:  # T rows: the grid's spare tiles hold the rest
            spare = []
            for j in range(min(-(-t_ // bm) + min(t_, num_slots), tm.shape[1])):
                slot, start, end = tm[:, j].tolist()
                if slot < 0:
                    assert end - start <= bm
                    spare += st_[start:max(start, end)]
            assert not set(spare) & set(routed)
            assert set(range(t_)) - set(routed) <= set(spare)


@settings(max_examples=60, deadline=None)
@given(num_slots=st.integers(1, 40), data=st.data())
def test_tiles_cover_tokens(num_slots, data):
    slots = data.draw(st.lists(st.integers(-1, num_slots - 1), max_size=300))
    _check_metadata(
        ld.LoRABatch.from_token_adapters(torch.tensor(slots, dtype=torch.int64)), slots, num_slots
    )


def test_static_batch_and_host_summary():
    b = ld.LoRABatch.empty(50)
    assert b.host_segments == () and b.max_slot == -1 and b.num_tokens == 0
    slots = [3, 3, -1, 0, 7, 3, 0] * 5
    b.update_(slots)
    _check_metadata(b, slots, 8)
    assert b.max_slot == 7 and [s for s, _, _ in b.host_segments] == [0, 3, 7]
    ptrs = (b.token_slots.data_ptr(), b.sorted_tokens.data_ptr(), b.tile_map.data_ptr())
    b.update_(torch.tensor([1, -1, 1]))
    assert (b.token_slots.data_ptr(), b.sorted_tokens.data_ptr(), b.tile_map.data_ptr()) == ptrs
    _check_metadata(b, [1, -1, 1], 8)


def test_segments_builder():
    b = ld.LoRABatch.from_segments(torch.tensor([2, 0, 3]), torch.tensor([5, 1, -1]))
    assert b.token_slots.tolist() == [5, 5, -1, -1, -1]
    assert b.host_segments == ((5, 0, 2),)
    assert b.device == torch.device("cpu")


@pytest.mark.parametrize("cap", [0, 1, 15, 16, 17, 129])
def test_empty_sizes(cap):
    b = ld.LoRABatch.empty(cap)
    assert (b.tile_map[:, 0] == -1).all()
    assert b.tile_map.shape[-1] == max_tiles(cap)
