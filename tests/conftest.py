import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA/ROCm GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_backend_selection():
    """Each test re-reads LORA_DISPATCH_BACKEND (tests may change it)."""
    import lora_dispatch.devices as devices

    devices.reset()
    yield
    devices.reset()


@pytest.fixture
def poison_empty(monkeypatch):
    """Make ``torch.empty``/``empty_like``/``new_empty`` return NaN-filled (or -1) memory.

    A kernel that allocates its output uninitialised and leaves an element unwritten then
    shows NaN instead of a plausible stale value.
    """
    real_empty, real_like = torch.empty, torch.empty_like
    real_new = torch.Tensor.new_empty

    def fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype != torch.bool:
            t.fill_(-1)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_like(*a, **k)))
    monkeypatch.setattr(
        torch.Tensor, "new_empty", lambda self, *a, **k: fill(real_new(self, *a, **k))
    )
    yield


CPU_BACKENDS = ["reference", "xla"]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request, monkeypatch):
    """Run a test once per backend that runs on the CPU (forced through the env var)."""
    import importlib

    import lora_dispatch.devices as devices

    name = request.param
    module = devices.get(name).module
    try:
        importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"backend {name} not importable: {exc}")
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", name)
    devices.reset()
    yield name
    devices.reset()
