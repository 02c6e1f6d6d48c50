"""The XLA backend on a real XLA device through torch_xla (PJRT_DEVICE=CPU in CI, TPU in prod).

Skipped where torch_xla is not installed (the main venv: torch_xla pins its own torch); run by
``ci/xla_leg.sh`` in its own venv. Counts XLA compilations
(``torch_xla.debug.metrics.metric_data('CompileTime')``) around the ops only: after the first
call at a token count, new adapter mixes (new routing, adapters reloaded with other ranks,
slots emptied) must not compile again, and results must match a float64 loop.
"""

from __future__ import annotations

import os

import pytest

torch_xla = pytest.importorskip("torch_xla")
os.environ.setdefault("PJRT_DEVICE", "CPU")  # read when the runtime starts (first device use)

import torch  # noqa: E402
import torch_xla.core.xla_model as xm  # noqa: E402
import torch_xla.debug.metrics as met  # noqa: E402
from helpers import TOL, naive_delta, random_adapter, rel_err, untouched_rows  # noqa: E402

import lora_dispatch as ld  # noqa: E402
import lora_dispatch.devices as devices  # noqa: E402
from lora_dispatch.kernels import xla  # noqa: E402

NUM_MIXES = 24


@pytest.fixture(scope="module")
def dev():
    return torch_xla.device()


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch):
    monkeypatch.delenv("LORA_DISPATCH_BACKEND", raising=False)  # automatic: xla on xla
    monkeypatch.delenv(xla.ENV_FORMULATION, raising=False)
    devices.reset()


def _compiles() -> int:
    data = met.metric_data("CompileTime")
    return 0 if data is None else int(data[0])


def _sync():
    torch_xla.sync()
    xm.wait_device_ops()


def _device_batch(slots: torch.Tensor, dev, static_capacity: int | None = None) -> ld.LoRABatch:
    """A batch whose tensors live on ``dev``, built on the host and moved.

    ``LoRABatch.from_token_adapters`` / ``LoRABatch.empty`` on an XLA device currently fail
    in ``batch._metadata`` (``torch.cumsum`` of a bool tensor stays bool on XLA, then
    ``- 1`` raises); see :func:`test_batch_built_on_device`. The op only reads the tensors,
    so building on the host and moving them is equivalent.
    """
    if static_capacity is None:
        b = ld.LoRABatch.from_token_adapters(slots)
    else:
        b = ld.LoRABatch.empty(static_capacity)
        b.update_(slots)
    for name in ("token_slots", "sorted_tokens", "tile_map"):
        setattr(b, name, getattr(b, name).to(dev))
    b.device = dev
    return b


class _Mirror:
    """LoRAWeights on the device plus the adapters as loaded (for the float64 reference)."""

    def __init__(self, dev, nslots, k, outs, rmax, dtype, seed=0):
        self.w = ld.LoRAWeights(nslots, k, outs, rmax, dtype=dtype, device=dev)
        self.adapters: dict[int, tuple] = {}
        self.g = torch.Generator().manual_seed(seed)
        self.k, self.outs, self.rmax, self.nslots = k, outs, rmax, nslots

    def reload(self, slot: int) -> None:
        r = int(torch.randint(0, self.rmax + 1, (1,), generator=self.g))
        if r == 0:
            self.w.unload(slot)
            self.adapters.pop(slot, None)
            return
        a, b = random_adapter(self.k, self.outs, r, self.g)
        c = float(torch.rand((), generator=self.g)) + 0.25
        self.w.load(slot, a, b, c)
        dt = self.w.dtype
        self.adapters[slot] = ([x.to(dt) for x in a], [x.to(dt) for x in b], c)


def test_info_describes_the_xla_device(dev):
    info = ld.info(dev)
    assert info["platform"] == "xla"
    assert info["backend"] == "xla", info["backend_reason"]
    assert info["device_name"] and info["arch"]
    assert info["compute_units"] >= 1
    d = devices.describe(dev)
    assert d.platform == "xla" and d.warp_size == 1


@pytest.mark.parametrize("form", ["bgmv", "masked", None], ids=["bgmv", "masked", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_one_compilation_for_many_adapter_mixes(dev, form, dtype, monkeypatch):
    monkeypatch.setattr(xla, "FORMULATION", form)
    nslots, k, outs, rmax, t = 4, 48, (32, 16, 16), 8, 13
    m = _Mirror(dev, nslots, k, outs, rmax, dtype)
    for s in range(nslots):
        m.reload(s)
    g = torch.Generator().manual_seed(1)
    per_op: dict[str, list[int]] = {"add_lora": [], "shrink": [], "expand": []}
    kinds = []  # built batch (capacity t) or static batch (capacity t + 3): one graph each
    load_compiles, mixes = 0, set()
    for step in range(NUM_MIXES):
        c = _compiles()
        for s in {step % nslots, (step * 3 + 1) % nslots}:
            m.reload(s)  # a new rank (or empty) in one or two slots
        _sync()
        load_compiles += _compiles() - c
        slots = torch.randint(-1, nslots, (t,), generator=g)
        mixes.add((tuple(slots.tolist()), tuple(m.w.host_ranks)))
        kinds.append(step % 2)
        batch = _device_batch(slots, dev, static_capacity=t + 3 if step % 2 else None)
        x_cpu = torch.randn(t, k, generator=g).to(dtype)
        base_cpu = torch.randn(t, sum(outs), generator=g).to(dtype)
        x, base = x_cpu.to(dev), base_cpu.to(dev)
        _sync()

        c = _compiles()
        out = ld.add_lora(base.clone(), x, m.w, batch)
        _sync()
        per_op["add_lora"].append(_compiles() - c)

        c = _compiles()
        y = ld.lora_shrink(x, m.w, batch)
        _sync()
        per_op["shrink"].append(_compiles() - c)

        c = _compiles()
        out2 = ld.lora_expand(y, m.w, batch, base.clone())
        _sync()
        per_op["expand"].append(_compiles() - c)

        ref = naive_delta(x_cpu, outs, m.adapters, slots)
        for got in (out.cpu(), out2.cpu()):
            assert rel_err(got, base_cpu, ref) <= TOL[dtype]
            for i in untouched_rows(slots, m.adapters, t):
                assert torch.equal(got[i], base_cpu[i]), f"row {i} has no adapter but changed"

    assert len(mixes) >= 20
    print(f"\n[{form or 'auto'} {dtype}] compiles per mix: {per_op}; weight loads compiled "
          f"{load_compiles} graphs over {NUM_MIXES} mixes")
    for op, counts in per_op.items():
        for kind in (0, 1):
            mine = [n for n, kd in zip(counts, kinds) if kd == kind]
            assert mine[0] <= 1, f"{op}: {mine[0]} graphs on the first call"
            assert sum(mine[1:]) == 0, f"{op} recompiled for a new adapter mix: {counts}"


def test_second_token_count_is_one_more_graph(dev, monkeypatch):
    monkeypatch.setattr(xla, "FORMULATION", None)
    nslots, k, outs, rmax = 3, 32, (24,), 4
    m = _Mirror(dev, nslots, k, outs, rmax, torch.float32, seed=5)
    for s in range(nslots):
        m.reload(s)
    _sync()
    g = torch.Generator().manual_seed(2)
    counts = {}
    for t in (5, 40, 5, 40, 40, 5):
        slots = torch.randint(-1, nslots, (t,), generator=g)
        batch = _device_batch(slots, dev)
        x = torch.randn(t, k, generator=g).to(dev)
        base = torch.randn(t, 24, generator=g).to(dev)
        _sync()
        c = _compiles()
        ld.add_lora(base, x, m.w, batch)
        _sync()
        counts.setdefault(t, []).append(_compiles() - c)
    assert counts[5][0] <= 1 and counts[40][0] <= 1
    assert sum(counts[5][1:]) == 0 and sum(counts[40][1:]) == 0, counts


def test_no_host_transfer_in_the_op(dev):
    """The op itself reads nothing back: no aten::_local_scalar_dense, no xla::_to_cpu."""
    m = _Mirror(dev, 3, 16, (8,), 4, torch.float32, seed=9)
    for s in range(3):
        m.reload(s)
    batch = _device_batch(torch.tensor([0, 1, -1, 2, 2]), dev)
    x, base = torch.randn(5, 16).to(dev), torch.zeros(5, 8).to(dev)
    _sync()
    names = ("aten::_local_scalar_dense", "xla::_to_cpu")
    before = {n: met.counter_value(n) or 0 for n in names}
    ld.add_lora(base, x, m.w, batch)
    ld.lora_expand(ld.lora_shrink(x, m.w, batch), m.w, batch, base)
    _sync()
    after = {n: met.counter_value(n) or 0 for n in names}
    assert after == before, (before, after)


def test_batch_built_on_device(dev):
    b = ld.LoRABatch.from_token_adapters(torch.tensor([0, -1, 1]).to(dev))
    assert b.device.type == "xla"
    s = ld.LoRABatch.empty(4, device=dev)
    s.update_([1, 0])
