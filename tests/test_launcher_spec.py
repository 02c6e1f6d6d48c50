"""fast_launch's key has Triton's equivalence classes (CPU only, any Triton 3.0 ... 3.9).

For thousands of seeded random argument sets per kernel, the generated key function and
Triton's own binder (``create_function_from_signature`` of the installed release, with a
CUDA or HIP backend object built without a GPU) must partition the calls identically:
same fast key => same Triton key (safety) and same Triton key => same fast key (no extra
compiles). Run under several releases with ``ci/launcher_versions.sh``.
"""

import random

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from lora_dispatch.launchers.fast import FastLauncher  # noqa: E402
from lora_dispatch.launchers.native import available as native_available  # noqa: E402

needs_native = pytest.mark.skipif(not native_available(),
                                  reason="native tier needs Triton 3.5/3.6 and a C compiler")
from lora_dispatch.launchers.versions import (  # noqa: E402
    get_adapter,
    reference_backend,
    reference_keyer,
)

ADAPTER = get_adapter()
VERSION = ADAPTER.version
N_CALLS = 2500


# ----------------------------------------------------------------------------- kernels
@triton.jit
def k_plain(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    pass


@triton.jit
def k_defaults(x_ptr, n, scale, flag, maybe_ptr, BLOCK: tl.constexpr = 128,
               ACT: tl.constexpr = "relu", m=16):
    pass


@triton.jit(do_not_specialize=["n", 3])
def k_dns(x_ptr, n, y_ptr, stride, BLOCK: tl.constexpr):
    pass


@triton.jit
def k_annotated(x_ptr, n: tl.int32, f: tl.float32, p: "*fp16", BLOCK: tl.constexpr):  # noqa: F722
    pass


@triton.jit
def k_wide(a_ptr, b_ptr, c_ptr, d_ptr, m, n, k, sa, sb, sc, sd, scale, e_ptr, f_ptr, g,
           h, BM: tl.constexpr, BN: tl.constexpr, EVEN: tl.constexpr, DT: tl.constexpr):
    pass


KERNELS = {"plain": k_plain, "defaults": k_defaults, "dns": k_dns,
           "annotated": k_annotated, "wide": k_wide}

if VERSION >= (3, 2):
    def _dnsoa(x_ptr, n, y_ptr, stride, BLOCK: tl.constexpr):
        pass

    KERNELS["dns_on_alignment"] = triton.jit(
        do_not_specialize_on_alignment=["x_ptr", "n", 3])(_dnsoa)


# ----------------------------------------------------------------------------- arguments
class FakePtr:
    """A non-tensor pointer argument: Triton only asks for ``data_ptr()`` and ``dtype``."""

    def __init__(self, ptr: int, dtype):
        self._ptr = ptr
        self.dtype = dtype

    def data_ptr(self) -> int:
        return self._ptr


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8,
          torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool]
for _name in ("float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        DTYPES.append(getattr(torch, _name))

# Views at every element offset 0..15: data_ptr() % 16 takes all reachable values.
VIEWS = [torch.empty(64, dtype=dt)[off:] for dt in DTYPES for off in range(16)]
PARAMS = [torch.nn.Parameter(torch.empty(64, dtype=dt)[off:], requires_grad=False)
          for dt in DTYPES[:4] for off in (0, 1, 8)]

EDGE_INTS = [0, 1, 2, 15, 16, 17, 32, -1, -15, -16, -17, 2**31 - 16, 2**31 - 1, 2**31,
             2**31 + 16, -(2**31), -(2**31) - 1, -(2**31) - 16, 2**32, 2**63 - 16, 2**63 - 1,
             2**63, 2**63 + 16, 2**64 - 16, 2**64 - 1, -(2**63), -(2**63) + 16]
FLOATS = [0.0, -0.0, 1.0, 1.5, 16.0, -3.25]
CONSTEXPRS = [1, 2, 16, 64, 128, True, False, 1.0, 2.5, None, "relu", "gelu", 0, -1]


def _runtime_value(rng: random.Random):
    r = rng.random()
    if r < 0.33:
        return rng.choice(VIEWS)
    if r < 0.35:
        return rng.choice(PARAMS)
    if r < 0.42:
        return FakePtr(rng.randrange(0, 1 << 40), rng.choice(DTYPES))
    if r < 0.70:
        return rng.choice(EDGE_INTS) if rng.random() < 0.6 else rng.randrange(-5000, 5000)
    if r < 0.78:
        return None
    if r < 0.86:
        return rng.choice([True, False])
    if r < 0.98:
        return rng.choice(FLOATS)
    return rng.choice(["str", (1, 2)])  # Triton rejects strings; tuples are specialised


OPTIONS = [{}, {}, {"num_warps": 4}, {"num_warps": 8}, {"num_stages": 2},
           {"num_warps": 4, "num_stages": 3}, {"num_ctas": 1}, {"maxnreg": 128}]


_DEFAULT = object()


def _values(rng: random.Random, jit) -> dict:
    """One value per parameter (``_DEFAULT``: leave it out) plus ``"__options__"``."""
    out: dict = {}
    for kp in jit.params:
        out[kp.name] = _value(rng, kp)
    out["__options__"] = rng.choice(OPTIONS)
    return out


def _value(rng: random.Random, kp):
    has_default = kp._param.default is not kp._param.empty
    if has_default and rng.random() < 0.3:
        return _DEFAULT
    return rng.choice(CONSTEXPRS) if kp.is_constexpr else _runtime_value(rng)


def _as_call(rng: random.Random, jit, values: dict) -> tuple[tuple, dict]:
    """Turn per-parameter values into ``(args, kwargs)``: a random positional prefix."""
    names = [kp.name for kp in jit.params]
    n_pos = rng.randrange(len(names) + 1)
    args: list = []
    kwargs: dict = {}
    for i, name in enumerate(names):
        v = values[name]
        if v is _DEFAULT:
            n_pos = min(n_pos, i)
            continue
        if i < n_pos:
            args.append(v)
        else:
            kwargs[name] = v
    kwargs.update(values["__options__"])
    return tuple(args), kwargs


def _mutate(rng: random.Random, jit, values: dict) -> dict:
    """Copy of ``values`` with one parameter (or the options) given a new random value."""
    out = dict(values)
    if rng.random() < 0.1:
        out["__options__"] = rng.choice(OPTIONS)
        return out
    kp = rng.choice(jit.params)
    out[kp.name] = _value(rng, kp)
    return out


def _tensor_mask(jit, args: tuple, kwargs: dict) -> tuple:
    names = {kp.name for kp in jit.params}
    bound = jit.signature.bind(*args, **{k: v for k, v in kwargs.items() if k in names})
    bound.apply_defaults()
    return tuple(type(v) is torch.Tensor for v in bound.arguments.values())


def _short(obj):
    if isinstance(obj, torch.Tensor):
        return f"T({obj.dtype}, ptr%16={obj.data_ptr() % 16})"
    if isinstance(obj, FakePtr):
        return f"Fake({obj.dtype}, ptr%16={obj.data_ptr() % 16})"
    if isinstance(obj, dict):
        return {k: _short(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_short(v) for v in obj)
    return obj


def _backends():
    kinds = ["cuda"]
    try:
        import triton.backends.amd.compiler  # noqa: F401

        kinds.append("hip")
    except Exception:
        pass
    return kinds


# ----------------------------------------------------------------------------- tests
def _keys(launcher, ref, jit, rng, values):
    """``(fast, triton, triton_augmented)`` keys of one call, or None if Triton rejects it."""
    args, kwargs = _as_call(rng, jit, values)
    try:
        r = ref(*args, **kwargs)
        hash(r)
    except Exception:
        # Triton rejects the call. The fast key may exist (its miss runs Triton, which
        # raises) or raise too; either is fine.
        try:
            launcher.key(*args, **kwargs)
        except Exception:
            pass
        return None
    f = launcher.key(*args, **kwargs)
    # Documented refinement: an exact torch.Tensor and another pointer-like object
    # (FakePtr here, TensorWrapper in Triton) never share a fast key.
    return f, r, (r, _tensor_mask(jit, args, kwargs)), (args, kwargs)


@pytest.mark.parametrize("backend_kind", _backends())
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_same_equivalence_classes_as_triton(name: str, backend_kind: str) -> None:
    """Random calls and one-parameter mutations of them: fast keys equal iff Triton's do."""
    jit = KERNELS[name]
    backend = reference_backend(backend_kind)
    launcher = FastLauncher(jit).build_for_tests(backend)
    ref = reference_keyer(jit, backend, ADAPTER)
    rng = random.Random(f"{name}-{backend_kind}")
    fast_to_ref: dict = {}
    ref_to_fast: dict = {}
    pairs = equal_pairs = 0

    def record(k):
        f, r, r_aug, call = k
        seen_r = fast_to_ref.setdefault(f, (r, call))
        assert seen_r[0] == r, (
            f"fast key {f!r} maps to two Triton keys:\n  {seen_r[0]!r}\n  {r!r}\n"
            f"calls: {_short(seen_r[1])} / {_short(call)}")
        seen_f = ref_to_fast.setdefault(r_aug, (f, call))
        assert seen_f[0] == f, (
            f"Triton key {r!r} split into two fast keys:\n  {seen_f[0]!r}\n  {f!r}\n"
            f"calls: {_short(seen_f[1])} / {_short(call)}")

    for _ in range(N_CALLS // 4):
        base = _values(rng, jit)
        kb = _keys(launcher, ref, jit, rng, base)
        if kb is None:
            continue
        record(kb)
        for _ in range(4):
            kv = _keys(launcher, ref, jit, rng, _mutate(rng, jit, base))
            if kv is None:
                continue
            record(kv)
            pairs += 1
            same_fast, same_ref, same_aug = kb[0] == kv[0], kb[1] == kv[1], kb[2] == kv[2]
            equal_pairs += same_ref
            ok = (same_ref if same_fast else not same_aug)
            assert ok, (
                f"pair disagrees (fast equal={same_fast}, Triton equal={same_ref}):\n"
                f"  {_short(kb[3])}\n  {_short(kv[3])}\n  fast {kb[0]!r} / {kv[0]!r}\n"
                f"  triton {kb[1]!r} / {kv[1]!r}")
    assert pairs > N_CALLS // 3
    assert equal_pairs > pairs // 20  # mutations often stay in the same class
    assert len(fast_to_ref) > 20  # the generator reaches many classes


def test_key_parts_are_cheap_inline_for_common_types() -> None:
    launcher = FastLauncher(k_plain).build_for_tests(reference_backend("cuda"))
    src = launcher.launcher_source
    assert "x_ptr.data_ptr() & 15" in src
    assert "n.__class__ is int" in src
    x = torch.empty(8, dtype=torch.float16)
    key = launcher.key(x, x[1:], 17, BLOCK=64)
    assert key[0] == torch.float16 and key[1] == (torch.float16, "misaligned")
    assert key[2] is False  # int32, not a multiple of 16


def test_hip_routes_tensors_through_triton() -> None:
    if "hip" not in _backends():
        pytest.skip("no AMD backend in this Triton")
    launcher = FastLauncher(k_plain).build_for_tests(reference_backend("hip"))
    assert "data_ptr() & 15" not in launcher.launcher_source



@needs_native
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_native_key_refines_triton(name: str) -> None:
    """The C key of the native tier: equal native keys => equal Triton keys, on random calls
    and one-parameter mutations; it must cover the common calls (tensors, ints, floats)."""
    jit = KERNELS[name]
    backend = reference_backend("cuda")
    launcher = FastLauncher(jit).build_for_tests(backend, lean=True, native=True)
    if launcher.launch_tier != "native":
        assert name == "annotated", launcher.launcher_source.splitlines()[0]
        return
    ref = reference_keyer(jit, backend, ADAPTER)
    rng = random.Random(f"native-{name}")
    native_to_ref: dict = {}
    covered = total = 0

    def one(values):
        nonlocal covered, total
        args, kwargs = _as_call(rng, jit, values)
        try:
            r = ref(*args, **kwargs)
            hash(r)
        except Exception:
            return
        total += 1
        n = launcher.native_key(*args, **kwargs)
        if n is None:
            return
        covered += 1
        seen = native_to_ref.setdefault(n, (r, args, kwargs))
        assert seen[0] == r, (
            f"native key maps to two Triton keys:\n  {seen[0]!r}\n  {r!r}\n"
            f"calls: {_short((seen[1], seen[2]))} / {_short((args, kwargs))}")

    for _ in range(N_CALLS // 4):
        base = _values(rng, jit)
        one(base)
        for _ in range(4):
            one(_mutate(rng, jit, base))
    assert total > N_CALLS // 3
    assert covered > total // 50, (covered, total)  # FakePtr / str / float constexprs: Python path
    assert len(native_to_ref) > 20


@needs_native
def test_native_key_covers_typical_lora_launch() -> None:
    """A kernel call of the shape the LoRA ops make (tensors, int strides including 1,
    constexpr blocks, num_warps / num_stages) gets a native key; a FakePtr does not."""
    launcher = FastLauncher(k_wide).build_for_tests(reference_backend("cuda"), lean=True,
                                                    native=True)
    t = torch.empty(64, dtype=torch.bfloat16)
    args = (t, t, t[1:], t, 4096, 1, 16, 1, 4096, 17, 2**33, 0.5, t, t, None, True)
    key = launcher.native_key(*args, BM=64, BN=32, EVEN=True, DT=None, num_warps=4,
                              num_stages=3)
    assert key is not None
    assert launcher.native_key(*args, BM=64, BN=32, EVEN=True, DT=None, num_warps=8,
                               num_stages=3) != key
    fake = (FakePtr(0, torch.float16),) + args[1:]
    assert launcher.native_key(*fake, BM=64, BN=32, EVEN=True, DT=None) is None
    assert launcher.native_key(*args, BM=64, BN=32, EVEN=True, DT=None, maxnreg=128) is None


@needs_native
def test_native_table_lookup_without_gpu() -> None:
    """Register / lookup logic of the C table (empty grids launch nothing, so no GPU is
    needed): a hit returns the stored kernel, a str constexpr is compared by value, other
    keys miss with NotImplemented, clear forgets everything."""
    from lora_dispatch.launchers import native
    from lora_dispatch.launchers.codegen import NOT_SET

    mod = native.load()
    codes = bytes([native.C_GENERIC_SA, native.C_GENERIC_SA, native.C_CONSTEXPR,
                   native.C_OPTION])
    table = mod.fl_new(codes, 3, native.torch_dtypes(), native.tensor_types(), NOT_SET)
    t = torch.empty(64, dtype=torch.float16)
    act = "".join(["re", "lu"])  # a str object that is not the literal's
    slots = (t, 4096, act, 4)
    key = mod.fl_key(table, 0, *slots)
    kernel = object()
    types = bytes([native.T_PTR, native.T_I32, native.T_SKIP])
    assert mod.fl_register(table, 0, key, 1234, 128, 1, 0, 0, 0, 2, types, kernel, slots)
    assert not mod.fl_register(table, 0, key, 1234, 128, 1, 0, 0, 0, 2, types, kernel, slots)
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, t, 4096, "relu", 4) is kernel
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, t, 4096, "gelu", 4) is NotImplemented
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, t[1:], 4096, "relu", 4) is NotImplemented
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, t, 4097, "relu", 4) is NotImplemented
    assert mod.fl_launch(table, (0, 1, 1), 0, 1, t, 4096, "relu", 4) is NotImplemented  # device
    assert mod.fl_launch(table, (0, 1, 1, 1), 0, 0, t, 4096, "relu", 4) is NotImplemented
    assert mod.fl_launch(table, [0, 1, 1], 0, 0, t, 4096, "relu", 4) is NotImplemented
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, t, 4096, "relu", NOT_SET) is NotImplemented
    assert mod.fl_info(table) == (1, 1)
    with pytest.raises(TypeError, match="expected 8 arguments, got 7"):
        mod.fl_launch(table, (0, 1, 1), 0, 0, t, 4096, "relu")
    with pytest.raises(ValueError, match="slots do not match"):
        mod.fl_register(table, 0, key, 1, 128, 1, 0, 0, 0, 2, types, kernel,
                        (t, 4096, "gelu", 4))
    mod.fl_clear(table)
    assert mod.fl_info(table) == (1, 0)  # hits are cumulative, variants forgotten
    assert mod.fl_launch(table, (0, 1, 1), 0, 0, t, 4096, "relu", 4) is NotImplemented
