"""CPU tests of ``benchmarks/ab_gluon_chunks.py``'s variant configs: each variant's override
reaches the Gluon shrink's config (and its validation) for the shape the registry picks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lora_dispatch.devices import configs
from lora_dispatch.devices.info import DeviceInfo

H200 = DeviceInfo("cuda", torch.device("cuda", 0), "NVIDIA H200", "sm_90", 132, 32, (9, 0))


@pytest.fixture(scope="module")
def ab():
    orig = configs.shrink_gluon
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ab_gluon_chunks.py"
    spec = importlib.util.spec_from_file_location("ab_gluon_chunks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert configs.shrink_gluon is orig  # importing the script changes nothing
    yield mod


@pytest.fixture(autouse=True)
def _triton_36(monkeypatch):
    monkeypatch.setattr(configs, "_triton_version", lambda: (3, 6))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(configs.ENV_GLUON, raising=False)


def _cfg(ab, over: dict, t: int = 8192, slices: int = 3, rank: int = 64):
    orig = configs.shrink_gluon
    try:
        with ab._Env(None, over):  # as the script builds each variant's plans
            return configs.shrink_gluon(H200, t, 4096, slices, rank, 2)
    finally:
        assert configs.shrink_gluon is orig and not ab._CUR


def test_no_override_is_the_registry_pick(ab):
    assert _cfg(ab, {}) == configs.shrink_gluon(H200, 8192, 4096, 3, 64, 2)


def test_token_tile_and_split_overrides_refit_the_ring(ab):
    c = _cfg(ab, {"bm": 128, "split": 2})
    # 128 tokens + 192 rank rows a 64-wide stage: the ring fits 5 stages
    assert (c.block_m, c.num_warps, c.split_k, c.chunks) == (128, 8, 2, 1)
    assert c.stages == configs.gluon_ring(4096, 128, 192, 1, 2)[1] == 5


def test_chunk_override_falls_back_where_the_ring_needs_it(ab):
    assert _cfg(ab, {"chunks": 2}, slices=1).chunks == 2
    c = _cfg(ab, {"chunks": 4})  # qkv r64: 4 chunks leave no two stages
    assert c.chunks < 4 and c.stages >= 2


def test_extra_fields_are_set_and_validated(ab):
    assert _cfg(ab, {"fields": {"stages": 3}}).stages == 3
    with pytest.raises(ValueError, match="chunks"):
        _cfg(ab, {"fields": {"chunks": 3}})
    with pytest.raises(TypeError):
        _cfg(ab, {"fields": {"no_such_field": 1}})


def test_every_named_variant_builds_a_valid_config(ab):
    for name, (_, over) in {**ab.SHRINK_VARIANTS, **ab.ADD_VARIANTS}.items():
        c = _cfg(ab, over)
        assert isinstance(c, configs.GluonShrinkConfig), name
