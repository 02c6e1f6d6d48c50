"""CPU test of ``benchmarks/probe_shrink_l2.py``'s tile map: every tile of a slot moved onto
that slot's first ``block_m`` rows, nothing else changed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import lora_dispatch as ld
from lora_dispatch.batch import tile_index


@pytest.fixture(scope="module")
def probe():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "probe_shrink_l2.py"
    spec = importlib.util.spec_from_file_location("probe_shrink_l2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("bm", [64, 128])
@pytest.mark.parametrize("lens", [(250, 250, 250, 250), (30, 300, 0, 170), (1000,)])
def test_l2_tiles_cover_each_slots_first_rows(probe, bm, lens):
    slots = [s for s, n in enumerate(lens) for _ in range(n)]
    slots[5:8] = [-1] * 3  # tokens without an adapter split the first segment
    batch = ld.LoRABatch.from_segments([1] * len(slots), slots)
    tm = batch.tile_map
    before = tm.clone()
    ti = tile_index(bm)
    got = probe._l2_tiles(tm, ti, bm)
    assert tm.equal(before)  # the batch's map is left alone
    rows = {i: [] for i in range(len(lens))}
    for r, t in enumerate(batch.sorted_tokens.tolist()):
        if slots[t] >= 0:
            rows[slots[t]].append(r)
    slot, start, end = before[ti].tolist()
    for j, s in enumerate(slot):
        if s < 0 or end[j] <= start[j]:  # no slot or no rows: unchanged
            assert got[ti, :, j].tolist() == [s, start[j], end[j]]
            continue
        first, last = min(rows[s]), max(rows[s]) + 1
        assert got[ti, :, j].tolist() == [s, first, min(first + bm, last)]
    keep = [i for i in range(tm.shape[0]) if i != ti]
    assert got[keep].equal(before[keep])
