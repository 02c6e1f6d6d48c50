"""The native tier with host tensor descriptors (CPU: keys, registration, table lookup).

A descriptor argument is keyed in C by what Triton keys it by (the base's dtype, the block
shape and, for Gluon's descriptor, the shared-memory layout); the ``CUtensorMap`` itself is
encoded at launch, which needs a GPU (``test_triton_gpu.py -k native_descriptors``).
"""

import random
import struct

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
TD = pytest.importorskip("triton.tools.tensor_descriptor").TensorDescriptor

from lora_dispatch.launchers import native  # noqa: E402
from lora_dispatch.launchers.codegen import NOT_SET  # noqa: E402
from lora_dispatch.launchers.fast import FastLauncher  # noqa: E402
from lora_dispatch.launchers.versions import reference_backend, reference_keyer  # noqa: E402

pytestmark = pytest.mark.skipif(not native.available(),
                                reason="native tier needs Triton 3.5/3.6 and a C compiler")

try:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GTD
except ImportError:  # pragma: no cover - no Gluon in this release
    gl = GTD = None


@triton.jit
def k_desc(x_desc, y_ptr, n, BLOCK: tl.constexpr):
    pass


class FakeTensor:
    """A tensor-like base that is not a torch.Tensor (the Python path keys it)."""

    def __init__(self, t):
        self._t = t
        self.dtype = t.dtype

    def data_ptr(self):
        return self._t.data_ptr()


def _descs(rng):
    """Random Triton / Gluon descriptors over a few dtypes, blocks, layouts, views."""
    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    rows, cols = rng.choice([(64, 64), (256, 128), (100, 64)])
    t = torch.empty(rows + 8, cols + 32, dtype=dtype)
    r0 = rng.choice([0, 8])
    view = t[r0:r0 + rows, :cols]
    block = [rng.choice([16, 64, 128]), rng.choice([32, 64])]
    padding = rng.choice(["zero", "nan"])
    if GTD is not None and dtype != torch.float32 and rng.random() < 0.5:
        gdt = gl.float16 if dtype == torch.float16 else gl.bfloat16
        shape = rng.choice([block, [block[0], 2 * block[1]]])
        layout = gl.NVMMASharedLayout.get_default_for(shape, gdt)
        return GTD(view, list(view.shape), list(view.stride()), block, layout, padding)
    return TD(view, list(view.shape), list(view.stride()), block, padding)


def test_native_key_of_descriptors_refines_triton():
    """Equal native keys => equal Triton keys, and equal Triton keys => equal native keys
    (no extra compiles), over random descriptors; non-tensor bases take the Python path."""
    backend = reference_backend("cuda")
    launcher = FastLauncher(k_desc).build_for_tests(backend, lean=True, native=True)
    assert launcher.launch_tier == "native"
    ref = reference_keyer(k_desc, backend)
    rng = random.Random(7)
    y = torch.empty(16, dtype=torch.float32)
    to_ref, to_native = {}, {}
    for _ in range(400):
        d = _descs(rng)
        n = launcher.native_key(d, y, 4096, BLOCK=64)
        r = ref(d, y, 4096, BLOCK=64)
        assert n is not None
        assert to_ref.setdefault(n, r) == r
        assert to_native.setdefault(r, n) == n
    assert len(to_ref) > 10
    fake = TD(torch.empty(64, 64), [64, 64], [64, 1], [16, 64])
    fake.base = FakeTensor(fake.base)
    assert launcher.native_key(fake, y, 4096, BLOCK=64) is None
    big = TD(torch.empty(512, 64), [512, 64], [64, 1], [512, 64])  # a box TMA cannot take
    assert launcher.native_key(big, y, 4096, BLOCK=64) is None


def test_raw_descriptor_keys_as_the_descriptor_it_stands_for():
    """``fl_raw_desc`` (the descriptor as fields, which add_lora's native per-call path sets
    per call) keys exactly as the descriptor it was made from, for its own launcher only;
    objects that are not host descriptors give None."""
    backend = reference_backend("cuda")
    launcher = FastLauncher(k_desc).build_for_tests(backend, lean=True, native=True)
    other = FastLauncher(k_desc).build_for_tests(backend, lean=True, native=True)
    mod = native.load()
    table = launcher._fl_ns["_fl_nat"]
    rng = random.Random(11)
    y = torch.empty(16, dtype=torch.float32)
    for _ in range(100):
        d = _descs(rng)
        raw = mod.fl_raw_desc(table, d)
        assert raw is not None
        assert launcher.native_key(raw, y, 4096, BLOCK=64) == launcher.native_key(
            d, y, 4096, BLOCK=64)
        assert other.native_key(raw, y, 4096, BLOCK=64) is None
    assert mod.fl_raw_desc(table, y) is None
    with pytest.raises(TypeError):
        mod.fl_raw_desc(y, d)


@pytest.mark.skipif(GTD is None, reason="no Gluon in this Triton release")
def test_equal_layouts_share_a_key():
    """Two equal layout objects key the same (Triton keys the layout by its repr); a
    different swizzle keys apart."""
    launcher = FastLauncher(k_desc).build_for_tests(reference_backend("cuda"), lean=True,
                                                    native=True)
    x = torch.empty(128, 64, dtype=torch.bfloat16)
    y = torch.empty(4, dtype=torch.float32)
    l1 = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    l2 = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    l3 = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=16, rank=2)
    k1, k2, k3 = (launcher.native_key(GTD(x, [128, 64], [64, 1], [64, 64], lay), y, 1, BLOCK=8)
                  for lay in (l1, l2, l3))
    assert k1 == k2 != k3


def _meta(rank=2, block=(64, 64), swizzle=3, elem_size=2, elem_type=9):
    return struct.pack("10i", swizzle, elem_size, elem_type, 0, rank, *block,
                       *[0] * (5 - len(block)))


def test_native_table_registers_descriptor_variants():
    """fl_register takes one metadata record per descriptor parameter (checked), and a
    registered variant is found only for descriptor arguments of its key (an empty grid
    looks the variant up and launches nothing, so no GPU is needed)."""
    mod = native.load()
    codes = bytes([native.C_GENERIC, native.C_GENERIC_SA, native.C_CONSTEXPR,
                   native.C_OPTION])
    table = mod.fl_new(codes, 3, native.torch_dtypes(), native.tensor_types(), NOT_SET,
                       native.desc_types())
    x = torch.empty(256, 64, dtype=torch.bfloat16)
    y = torch.empty(16, dtype=torch.float32)
    d = TD(x, [256, 64], [64, 1], [64, 64])
    slots = (d, y, 64, 4)
    key = mod.fl_key(table, 0, *slots)
    types = bytes([native.T_DESC, native.T_PTR, native.T_SKIP])
    kernel = object()
    with pytest.raises(ValueError, match="bytes per tensor-descriptor"):
        mod.fl_register(table, 0, key, 1, 128, 1, 0, 0, 0, 2, types, kernel, slots)
    with pytest.raises(ValueError, match="bad tensor-descriptor metadata"):
        mod.fl_register(table, 0, key, 1, 128, 1, 0, 0, 0, 2, types, kernel, slots,
                        _meta(rank=2, block=(64, 512)))
    assert mod.fl_register(table, 0, key, 1, 128, 1, 0, 0, 0, 2, types, kernel, slots,
                           _meta())
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, *slots) is kernel
    other = TD(x[64:], [192, 64], [64, 1], [64, 64])  # another base and shape: same key
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, other, y, 64, 4) is kernel
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, TD(x, [256, 64], [64, 1], [32, 64]), y, 64,
                         4) is NotImplemented  # another block
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, x, y, 64, 4) is NotImplemented  # a tensor
    assert mod.fl_info(table) == (2, 1)


def test_variants_with_pointer_lowered_descriptors_stay_in_python():
    """A compiled variant whose descriptor was not lowered to a CUtensorMap (no TMA
    metadata) cannot be packed by the C side."""

    class Src:
        signature = {"x_desc": "tensordesc<bf16[64, 64]>", "y_ptr": "*fp32", "n": "i32"}

    class Meta:
        tensordesc_meta = None

    class Kernel:
        src, metadata = Src(), Meta()

    names = list(Src.signature)
    assert native.variant_types(Kernel(), names) is None
    Meta.tensordesc_meta = [{"swizzle": 3, "elem_size": 2, "elem_type": 10,
                             "block_size": [64, 64], "fp4_padded": False}]
    assert list(native.variant_types(Kernel(), names)) == [native.T_DESC, native.T_PTR,
                                                           native.T_I32]
    assert native.variant_descs(Kernel()) == _meta(elem_type=9)  # bf16: device 10 -> host 9
