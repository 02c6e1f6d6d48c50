"""fast_launch against plain ``kernel[grid]`` on a real GPU (CUDA or ROCm).

Every case is launched both ways on the same inputs; outputs must match bit for bit and the
compiled kernel fast_launch used must be the very object (and hash) Triton selected.
"""

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA / ROCm GPU"),
]

from lora_dispatch.launchers import (  # noqa: E402
    fast_launch,
    get_adapter,
    set_launcher_mode,
    set_lean_launch,
    set_native_launch,
)

_TIER_OK = get_adapter().lean_capable and torch.version.hip is None


@triton.jit
def _axpb(x_ptr, y_ptr, n, scale, big, flag, bias_ptr, BLOCK: tl.constexpr,
          ACT: tl.constexpr = 0):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = x * scale + (big % 7)
    if bias_ptr is not None:
        y += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if flag:
        y += 1.0
    if ACT == 1:
        y = tl.maximum(y, 0.0)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n"])
def _copy_dns(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


FAST_AXPB = fast_launch(_axpb)
FAST_COPY = fast_launch(_copy_dns)


@pytest.fixture(params=["python", "lean", "native"])
def lean(request):
    """The launch tier under test (see ``FastLauncher.launch_tier``)."""
    tier = request.param
    if tier != "python" and not _TIER_OK:
        pytest.skip(f"the {tier} tier needs Triton 3.5 / 3.6 on CUDA")
    set_launcher_mode("fast")
    set_lean_launch(tier != "python")
    set_native_launch(tier == "native")
    yield tier
    set_lean_launch(None)
    set_native_launch(None)
    set_launcher_mode(None)


def _views(dtype, n, offset):
    base = torch.randn(n + 16, device="cuda").to(dtype)
    return base[offset:offset + n]


def _both(plain_jit, fast, grid, make_args, kwargs):
    """Launch plain then fast (miss) then fast (hit); return outputs and kernels."""
    args_p = make_args()
    k_plain = plain_jit[grid](*args_p, **kwargs)
    args_f = make_args()
    k_miss = fast[grid](*args_f, **kwargs)
    args_h = make_args()
    before = fast.cache_info().hits
    k_hit = fast[grid](*args_h, **kwargs)
    torch.cuda.synchronize()
    assert fast.cache_info().hits == before + 1, "second fast launch was not a cache hit"
    assert fast.launch_tier in ("python", "lean", "native")
    return (args_p, args_f, args_h), (k_plain, k_miss, k_hit)


CASES = [
    # (dtype, offset, n, scale, big, flag, with_bias, BLOCK, ACT, num_warps)
    (torch.float32, 0, 1024, 0.5, 3, False, False, 256, 0, 4),
    (torch.float32, 1, 1024, 0.5, 3, False, False, 256, 0, 4),     # misaligned x and y
    (torch.float32, 3, 17, 2.0, 16, True, True, 64, 1, 4),         # n=17, big%16==0
    (torch.float16, 0, 1, 1.5, 1, False, True, 64, 0, 2),          # n == 1, big == 1
    (torch.float16, 5, 16, -1.0, 2**31, True, False, 128, 1, 8),   # n == 16, big int64
    (torch.bfloat16, 2, 4096, 0.25, 2**31 - 1, False, True, 512, 0, 4),
    (torch.float32, 4, 4096, 1.0, -17, True, True, 1024, 1, 8),     # offset 16 bytes
    (torch.float32, 0, 333, 3.0, 0, False, False, 128, 0, 1),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_matches_plain_triton_bit_for_bit(case, lean) -> None:
    dtype, offset, n, scale, big, flag, with_bias, block, act, warps = case
    torch.manual_seed(0)
    x = _views(dtype, n, offset)
    bias = _views(dtype, n, (offset + 1) % 4) if with_bias else None

    def make_args():
        y = _views(dtype, n, offset)
        y.zero_()
        return (x, y, n, scale, big, flag, bias)

    kwargs = {"BLOCK": block, "num_warps": warps}
    if act:
        kwargs["ACT"] = act
    grid = (triton.cdiv(n, block),)
    outs, kernels = _both(_axpb, FAST_AXPB, grid, make_args, kwargs)
    assert torch.equal(outs[0][1], outs[1][1]) and torch.equal(outs[0][1], outs[2][1])
    k_plain, k_miss, k_hit = kernels
    assert k_miss is k_plain and k_hit is k_plain
    assert k_hit.hash == k_plain.hash
    assert FAST_AXPB.launch_tier == lean


def test_native_rejects_host_tensor_like_triton(lean) -> None:
    """A CPU tensor where a CUDA one was launched raises ValueError (as Triton's launcher
    does) instead of launching a kernel on a host pointer; nothing is written."""
    x = torch.randn(1024, device="cuda")
    y = torch.zeros_like(x)
    for _ in range(2):
        FAST_AXPB[(4,)](x, y, 1024, 0.5, 3, False, None, BLOCK=256)
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match="cpu tensor"):
        FAST_AXPB[(4,)](x.cpu(), y, 1024, 0.5, 3, False, None, BLOCK=256)
    y2 = torch.zeros_like(x)
    FAST_AXPB[(4,)](x, y2, 1024, 0.5, 3, False, None, BLOCK=256)
    torch.cuda.synchronize()
    assert torch.equal(y, y2)


def test_native_graph_capture_and_many_variants(lean) -> None:
    """Launches captured in a CUDA graph replay like plain ones; 12 variants coexist."""
    n = 4096
    xs = [_views(torch.float32, n, off) for off in (0, 1, 2, 3)]
    for x in xs:
        for block in (128, 256, 512):
            y_p, y_f = torch.zeros_like(x), torch.zeros_like(x)
            _axpb[(triton.cdiv(n, block),)](x, y_p, n, 0.5, 3, False, None, BLOCK=block)
            FAST_AXPB[(triton.cdiv(n, block),)](x, y_f, n, 0.5, 3, False, None, BLOCK=block)
            FAST_AXPB[(triton.cdiv(n, block),)](x, y_f, n, 0.5, 3, False, None, BLOCK=block)
            torch.cuda.synchronize()
            assert torch.equal(y_p, y_f)
    x = xs[0]
    y = torch.zeros_like(x)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g, stream=s):
            FAST_AXPB[(n // 256,)](x, y, n, 2.0, 3, True, None, BLOCK=256)
    torch.cuda.current_stream().wait_stream(s)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    ref = torch.zeros_like(x)
    _axpb[(n // 256,)](x, ref, n, 2.0, 3, True, None, BLOCK=256)
    torch.cuda.synchronize()
    assert torch.equal(y, ref)


def test_callable_grid_and_defaults(lean) -> None:
    n = 3000
    x = torch.randn(n, device="cuda")
    grid = lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),)  # noqa: E731

    def make_args():
        return (x, torch.empty_like(x), n, 0.5, 7, True, None)

    outs, kernels = _both(_axpb, FAST_AXPB, grid, make_args, {"BLOCK": 128})
    assert torch.equal(outs[0][1], outs[2][1])
    assert kernels[2] is kernels[0]


def test_do_not_specialize_shares_one_variant(lean) -> None:
    x = torch.randn(4096, device="cuda")
    kernels = []
    for n in (1, 16, 17, 4096):
        y_p, y_f = torch.zeros_like(x), torch.zeros_like(x)
        kp = _copy_dns[(triton.cdiv(n, 256),)](x, y_p, n, BLOCK=256)
        kf = FAST_COPY[(triton.cdiv(n, 256),)](x, y_f, n, BLOCK=256)
        kf = FAST_COPY[(triton.cdiv(n, 256),)](x, y_f, n, BLOCK=256)
        torch.cuda.synchronize()
        assert torch.equal(y_p, y_f) and kf is kp
        kernels.append(kf)
    assert all(k is kernels[0] for k in kernels)


def test_side_stream(lean) -> None:
    n = 1 << 16
    x = torch.randn(n, device="cuda")
    y_ref = torch.empty_like(x)
    _copy_dns[(n // 1024,)](x, y_ref, n, BLOCK=1024)
    FAST_COPY[(n // 1024,)](x, torch.empty_like(x), n, BLOCK=1024)  # make it a hit below
    s = torch.cuda.Stream()
    y = torch.empty_like(x)
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            FAST_COPY[(n // 1024,)](x, y, n, BLOCK=1024)
    s.synchronize()
    assert torch.equal(y, y_ref)
