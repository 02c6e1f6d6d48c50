"""CPU tests of the benchmark timers' bookkeeping (the GPU ones are in test_timing_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from lora_dispatch.bench import timing


@pytest.fixture
def fake_cuda(monkeypatch):
    """``host_time_us`` on a pretend CUDA device: the spins it queues (µs) and the answers
    of the event after each spin (True: the spin had ended, the round waited on the GPU)."""
    spins: list[float] = []
    answers: list[bool] = []

    class Event:
        def record(self) -> None:
            pass

        def query(self) -> bool:
            return answers.pop(0) if answers else False

    monkeypatch.setattr(timing, "_sleep", lambda cycles: None)
    monkeypatch.setattr(timing, "_busy", spins.append)
    monkeypatch.setattr(timing, "_sync", lambda device: None)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    return spins, answers


def test_host_time_reruns_rounds_that_waited_on_the_gpu(fake_cuda):
    spins, answers = fake_cuda
    answers += [True, True]  # the first two rounds outlast their spin
    calls = []
    us = timing.host_time_us(lambda: calls.append(1), torch.device("cuda"), n=64, rounds=3)
    assert us > 0
    assert len(calls) == 20 + 10 + 64 + 32 + 3 * 16  # warm-up, estimate, 2 dropped, 3 kept
    assert len(spins) == 5 and all(s >= 200 for s in spins)


def test_host_time_lengthens_the_spin_at_one_call(fake_cuda):
    spins, answers = fake_cuda
    answers += [True, True, True]
    calls = []
    timing.host_time_us(lambda: calls.append(1), torch.device("cuda"), n=1, rounds=2)
    assert len(calls) == 1 + 1 + 3 + 2
    assert spins[1] == 2 * spins[0] and spins[2] == 4 * spins[0]


def test_host_time_gives_up_on_a_spin_that_never_outlasts(fake_cuda):
    spins, answers = fake_cuda
    answers += [True] * 100
    timing.host_time_us(lambda: None, torch.device("cuda"), n=4, rounds=2)
    assert len(spins) == 2 + 7 + 1  # n 4 -> 2 -> 1, the spin x2 up to x64, then kept


def test_host_time_does_not_hold_for_sync_each_or_cpu(fake_cuda):
    spins, _ = fake_cuda
    timing.host_time_us(lambda: None, torch.device("cuda"), n=8, rounds=2, sync_each=True)
    timing.host_time_us(lambda: None, torch.device("cpu"), n=8, rounds=2)
    assert spins == []


def test_host_time_estimate_leaves_out_the_first_calls(fake_cuda, monkeypatch):
    """A first call that compiles (here: 1 s) must not size the spins."""
    spins, _ = fake_cuda
    clock = [0]
    monkeypatch.setattr(timing.time, "perf_counter_ns", lambda: clock[0])

    def fn():
        clock[0] += 1_000_000_000 if clock[0] == 0 else 5_000  # 1 s, then 5 µs a call

    us = timing.host_time_us(fn, torch.device("cuda"), n=100, rounds=3)
    assert us == pytest.approx(5.0)
    assert spins and max(spins) <= 3 * 100 * 5.0 + 1e-9


def test_best_host_us_calls_n_times_per_repeat_and_keeps_the_best():
    from lora_dispatch.bench.timing import best_host_us

    calls = []
    us = best_host_us(lambda: calls.append(1), torch.device("cpu"), 7, repeats=3)
    assert len(calls) == 21 and 0 < us < 1e4


def test_pct_of_copy():
    """Bytes over µs against a GB/s ruler: 4 GB in 1000 µs is 4000 GB/s, half of 8000;
    missing times or rulers give ``None`` rather than a number."""
    assert timing.pct_of_copy(4e9 / 1e3, 1.0, 8000.0) == pytest.approx(50.0)
    assert timing.pct_of_copy(4e9, 1000.0, 4000.0) == pytest.approx(100.0)
    for us, copy in ((None, 4000.0), (0.0, 4000.0), (1.0, None)):
        assert timing.pct_of_copy(1e6, us, copy) is None


def test_event_time_drops_calls_the_host_was_late_for(monkeypatch):
    """Calls whose start event the GPU passed before the host finished issuing them (their
    interval holds host time) are left out; where they are most, the calls run again behind
    a longer spin."""
    spins: list[float] = []

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            self.ms = 1.0  # the estimate pair

        def record(self) -> None:
            pass

        def synchronize(self) -> None:
            pass

        def query(self) -> bool:  # behind the first, short spin 7 calls in 10 are late
            Event.k += 1
            late = spins[-1] < 400 and Event.k % 10 < 7
            self.ms = 0.05 if late else 0.01
            return late

        def elapsed_time(self, end: Event) -> float:
            return self.ms

    Event.k = 0
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(timing, "_flush_buffer", lambda device: torch.ones(4))
    monkeypatch.setattr(timing, "_busy", spins.append)
    us = timing.gpu_time_us(lambda: None, torch.device("cuda"), warmup_ms=1, rep_ms=20)
    assert us == pytest.approx(10.0)
    assert spins[0] == timing._CALL_SPIN_US and 4 * timing._CALL_SPIN_US in spins
