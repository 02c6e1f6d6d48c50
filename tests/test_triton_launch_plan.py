"""Host side of the Triton backend that needs no GPU: plan layout and workspaces."""

import inspect

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from lora_dispatch.kernels.triton import launch  # noqa: E402
from lora_dispatch.kernels.triton.expand_kernel import expand_kernel  # noqa: E402
from lora_dispatch.kernels.triton.shrink_kernel import shrink_kernel  # noqa: E402


def _params(kernel) -> list[str]:
    fn = getattr(kernel, "fn", None)
    if fn is None:  # FastLauncher around an interpreted function
        fn = kernel.__wrapped__.fn
    return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize("kernel, names", [(shrink_kernel, launch._SHRINK_CX),
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


def test_tma_shrink_takes_the_pointer_shrinks_constexprs() -> None:
    """``shrink_tma_kernel`` is launched with the pointer shrink's plan constexprs."""
    from lora_dispatch.kernels.triton.shrink_tma_kernel import shrink_tma_kernel

    assert tuple(_params(shrink_tma_kernel)[-len(launch._SHRINK_CX):]) == launch._SHRINK_CX


def _info(name: str, arch: str, cap: tuple[int, int] | None, platform: str = "cuda"):
    from lora_dispatch.devices.info import DeviceInfo

    return DeviceInfo(platform, torch.device("cuda", 0), name, arch, 132, 32, cap)


@pytest.mark.parametrize("t, split_k", [(1, None), (64, None), (2048, 4), (8192, 2)])
def test_public_shrink_waits_on_its_zero_fill_on_hopper(t, split_k, monkeypatch) -> None:
    """The public shrink's split-K plan (after a zero fill) waits on the fill
    (``WAIT``: a programmatic dependent launch) on Hopper; not where PDL is off or missing,
    not when the kernel writes its own zeros (one split), not for add_lora's workspace
    shrink."""
    import lora_dispatch as ld
    from lora_dispatch.devices import configs

    if tuple(int(v) for v in __import__("triton").__version__.split(".")[:2]) < (3, 4):
        pytest.skip("programmatic dependent launch needs Triton 3.4+")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(configs.ENV_PDL, raising=False)
    h200 = _info("NVIDIA H200", "sm_90", (9, 0))
    a100 = _info("NVIDIA A100-SXM4-80GB", "sm_80", (8, 0))
    w = ld.LoRAWeights(4, 4096, (4096, 1024, 1024), 16, dtype=torch.bfloat16)
    p = launch._shrink_plan(w, t, atomic=True, split_k=split_k, info=h200)
    assert p.split > 1 and p.meta["ATOMIC"] and p.meta["WAIT"] == 1
    zero_fill = launch._shrink_plan(w, t, atomic=True, split_k=1, fill=False, info=h200)
    assert not zero_fill.meta["ATOMIC"] and zero_fill.meta["WAIT"] == 1  # plain stores
    own = launch._shrink_plan(w, t, atomic=True, split_k=1, info=h200)
    assert own.meta["FILL"] and own.meta["WAIT"] == 0
    assert launch._shrink_plan(w, t, atomic=False, info=h200).meta["WAIT"] == 0
    assert launch._shrink_plan(w, t, atomic=True, split_k=split_k,
                               info=a100).meta["WAIT"] == 0
    monkeypatch.setenv(configs.ENV_PDL, "0")
    assert launch._shrink_plan(w, t, atomic=True, split_k=split_k,
                               info=h200).meta["WAIT"] == 0
    assert p.cx[launch._SHRINK_CX.index("WAIT")] == 1  # passed positionally


def test_zero_fill_tails_trigger_only_for_a_waiting_shrink() -> None:
    """The zero fill's constexprs: ``(ZERO_BLOCK, PDL)`` with ``PDL`` set only in the tail
    used before a shrink that waits on it."""
    from lora_dispatch.kernels.triton.fill_kernel import zero_kernel

    assert _params(zero_kernel)[-2:] == ["BLOCK", "PDL"]
    assert [tail[:2] for tail in launch._ZERO_TAILS] == [(launch.ZERO_BLOCK, 0),
                                                         (launch.ZERO_BLOCK, 1)]
