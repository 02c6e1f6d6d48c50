"""Host side of the Triton backend that needs no GPU: plan layout and workspaces."""

import inspect

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from lora_dispatch.kernels.triton import launch  # noqa: E402
from lora_dispatch.kernels.triton.expand_kernel import expand_kernel  # noqa: E402
from lora_dispatch.kernels.triton.shrink_kernel import shrink_kernel  # noqa: E402
from lora_dispatch.kernels.triton.shrink_tma_kernel import shrink_tma_kernel  # noqa: E402


def _params(kernel) -> list[str]:
    fn = getattr(kernel, "fn", None)
    if fn is None:  # FastLauncher around an interpreted function
        fn = kernel.__wrapped__.fn
    return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize("kernel, names", [(shrink_kernel, launch._SHRINK_CX),
                                           (shrink_tma_kernel, launch._SHRINK_CX),
                                           (expand_kernel, launch._EXPAND_CX)])
def test_plans_pass_constexprs_in_signature_order(kernel, names) -> None:
    """Plans pass the constexprs positionally: they must be the kernel's last parameters."""
    assert tuple(_params(kernel)[-len(names):]) == names


def test_workspace_off_gpu_is_fresh_and_not_cached() -> None:
    x = torch.empty(4, 8)
    launch.release_workspaces()
    a = launch._workspace(100, x)
    b = launch._workspace(100, x)
    assert a.numel() == 100 and a.dtype == torch.float32
    assert a is not b  # a fresh tensor per call, nothing kept
    assert launch.workspace_bytes() == 0


class _OnDevice:
    """Stands in for a GPU tensor: ``get_device()`` says device 0, memory comes from the CPU."""

    device = torch.device("cpu")

    def get_device(self) -> int:
        return 0


def test_workspace_reused_per_stream_and_thread_and_grown(monkeypatch) -> None:
    """The eager GPU path: one grow-only buffer per (device, stream, thread); a new stream or
    thread gets its own; graph capture always allocates."""
    import threading

    stream = [111]
    monkeypatch.setattr(launch, "_raw_stream", lambda dev: stream[0])
    monkeypatch.setattr(launch, "_capturing", lambda: False)
    launch.release_workspaces()
    x = _OnDevice()
    a = launch._workspace(100, x)
    assert launch._workspace(50, x) is a and launch._workspace(100, x) is a
    grown = launch._workspace(150, x)
    assert grown is not a and grown.numel() >= 200  # doubles: few regrowths
    assert launch._workspace(120, x) is grown
    stream[0] = 222
    other_stream = launch._workspace(10, x)
    assert other_stream is not grown
    box = []
    th = threading.Thread(target=lambda: box.append(launch._workspace(10, x)))
    th.start()
    th.join()
    assert box[0] is not other_stream
    assert launch.workspace_bytes() == 4 * (grown.numel() + other_stream.numel() + box[0].numel())
    monkeypatch.setattr(launch, "_capturing", lambda: True)
    assert launch._workspace(10, x) is not other_stream  # capture: the graph owns its buffer
    launch.release_workspaces()
    assert launch.workspace_bytes() == 0

