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
    assert a.data_ptr() != b.data_ptr() or a is not b
    assert launch.workspace_bytes() == 0
