"""GPU tests of the benchmark timers: the profiler's kernel time and the L2 eviction."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from lora_dispatch.bench import timing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA / ROCm GPU"),
]


@pytest.fixture(scope="module")
def dev():
    return torch.device("cuda", torch.cuda.current_device())


def test_eviction_is_one_read(dev):
    buf = timing._flush_buffer(dev)
    assert buf.numel() * buf.element_size() >= 256 << 20
    timing._evict(buf)
    torch.cuda.synchronize(dev)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        timing._evict(buf)
        torch.cuda.synchronize(dev)
    kernels = [e for e in timing._device_events(prof) if "emset" not in e.name]
    assert len(kernels) == 1, [e.name for e in kernels]  # no cast kernel writing a copy


def test_kernel_time_below_event_time(dev):
    x = torch.randn(16 << 20, device=dev)
    y = torch.empty_like(x)
    events = timing.gpu_time_us(lambda: y.copy_(x), dev)
    spans = timing.kernel_spans_us(lambda: y.copy_(x), dev, n=10)
    assert len(spans) == 10
    k = sorted(spans)[5]
    assert 0 < k <= events
    # 128 MB moved: no faster than 10 TB/s, no slower than the event time allows
    assert k >= 128e6 / 10e12 * 1e6


def test_kernel_time_spans_every_launch(dev):
    x = torch.randn(8 << 20, device=dev)
    one = timing.gpu_time_us(lambda: x.mul_(1.0), dev, method="kernel")
    three = timing.gpu_time_us(lambda: (x.mul_(1.0), x.mul_(1.0), x.mul_(1.0)), dev,
                               method="kernel")
    assert three > 2.5 * one


def test_kernel_time_leaves_out_host_gaps_between_launches(dev):
    """Two launches with 60 µs of host work between them span what two back-to-back ones
    do: the spin queued before each call covers the host (without it the span grew by the
    host's time)."""
    import time

    x = torch.randn(1 << 16, device=dev)

    def host_wait():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 60e-6:
            pass

    def fast():
        x.mul_(1.0)
        x.mul_(1.0)

    def slow():
        x.mul_(1.0)
        host_wait()
        x.mul_(1.0)

    f = sorted(timing.kernel_spans_us(fast, dev, n=11))[5]
    s = sorted(timing.kernel_spans_us(slow, dev, n=11))[5]
    assert s < f + 20.0, (s, f)


def test_kernel_time_rejects_varying_work(dev):
    x = torch.randn(1 << 20, device=dev)
    calls = []

    def fn():
        calls.append(1)
        for _ in range(len(calls) % 2 + 1):
            x.mul_(1.0)

    with pytest.raises(RuntimeError, match="same work"):
        timing.kernel_spans_us(fn, dev, n=5)


@pytest.mark.parametrize("host_us", [80, 300])
def test_timed_interval_excludes_host_launch_time(dev, host_us):
    """A call whose host side is slow times like the same call without it. 80 µs of host
    work before its launch (more than the ~65 µs eviction queued before it): the spin queued
    before the start event covers the host (without the spin this reads ~15 µs more). 300
    µs, three times the spin: those calls read late and are timed again behind a longer
    spin (before, each read the host's time)."""
    import time

    x = torch.randn(1 << 16, device=dev)

    def slow():
        t_end = time.perf_counter() + host_us * 1e-6
        while time.perf_counter() < t_end:
            pass
        x.mul_(1.0)

    fast = timing.gpu_time_us(lambda: x.mul_(1.0), dev, warmup_ms=2, rep_ms=5)
    assert timing.gpu_time_us(slow, dev, warmup_ms=2, rep_ms=5) < fast + 5


def test_host_time_never_waits_on_the_gpu(dev):
    """4096 calls of ~50 µs of GPU work each (~200 ms) and a few µs of host work each.
    Where they overflow the launch queue, timing them back to back waits on the GPU;
    ``host_time_us`` drops the rounds in which the spin queued before them ended and
    reruns them with fewer calls, so it must report the host side either way."""
    spin = 50 * 2000  # ~50 µs at ~2 GHz
    us = timing.host_time_us(lambda: torch.cuda._sleep(spin), dev, n=4096, rounds=3)
    assert us < 25
