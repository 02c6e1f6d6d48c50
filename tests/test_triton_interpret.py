"""Triton kernels under TRITON_INTERPRET=1 on the CPU against a float64 reference.

The interpreter needs TRITON_INTERPRET=1 before ``triton.language`` is first imported, and
turning it on inside a shared pytest process would switch every later Triton test of that
process to the interpreter. So the tests run in-process only when the process was started
with TRITON_INTERPRET=1; otherwise they are skipped here and
:func:`test_interpreter_suite_in_fresh_process` runs this module in a fresh Python process
that has it set from the start, so the coverage is kept.
"""

from __future__ import annotations

import os

IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1"

import importlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from interpret_bounds import checked_memory  # noqa: E402

import lora_dispatch as ld  # noqa: E402
import lora_dispatch.devices as devices  # noqa: E402

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.errors import InterpreterError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

_SUBMODULES = ("_jit", "shrink_kernel", "shrink_ticket_kernel", "shrink_tma_kernel",
               "expand_kernel", "fill_kernel",
               "fused_kernel", "overlap_kernel", "launch")


def _interpreted(kernel) -> bool:
    jit = getattr(kernel, "__wrapped__", kernel)  # under @fast_launch
    return type(jit).__name__ == "InterpretedFunction"


def _language_interpreted() -> bool:
    import triton.language as tl

    return type(tl.zeros).__name__ != "JITFunction"


def _load_interpreted():
    """The backend package with interpreter-wrapped kernels (reloading it if needed)."""
    pkg = "lora_dispatch.kernels.triton"
    mod = importlib.import_module(pkg)
    if _interpreted(sys.modules[f"{pkg}.shrink_kernel"].shrink_kernel):
        return mod
    for name in _SUBMODULES:
        importlib.reload(sys.modules[f"{pkg}.{name}"])
    mod = importlib.reload(mod)
    if not _interpreted(sys.modules[f"{pkg}.shrink_kernel"].shrink_kernel):
        pytest.skip("lora_dispatch.kernels.triton was imported without TRITON_INTERPRET=1 "
                    "and could not be reloaded interpreted", allow_module_level=True)
    return mod


IN_PROCESS = IN_PROCESS and _language_interpreted()
tk = _load_interpreted() if IN_PROCESS else None


@pytest.fixture(autouse=True)
def _interpret_env(request, monkeypatch):
    if not IN_PROCESS and request.node.name != "test_interpreter_suite_in_fresh_process":
        pytest.skip("this process was not started with TRITON_INTERPRET=1; "
                    "covered by test_interpreter_suite_in_fresh_process")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if not IN_PROCESS:
        yield
        return
    with checked_memory():  # an access past every tensor argument raises, not reads junk
        yield


def test_interpreter_suite_in_fresh_process():
    """Run this module in a fresh interpreter when this process cannot interpret Triton."""
    if IN_PROCESS:
        pytest.skip("the interpreter works in this process: the tests run here")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           os.path.abspath(__file__)]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


@triton.jit
def _bump_kernel(x_ptr, n, SPAN: tl.constexpr):
    offs = tl.arange(0, SPAN)  # [SPAN]
    mask = offs < n  # [SPAN]
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask, other=0.0) + 1.0, mask=mask)


def test_bounds_checker_catches_a_read_past_the_tensor():
    """The guard every test here runs under: masked-off addresses pass, one past raises."""
    x = torch.zeros(8)
    with checked_memory() as state:
        _bump_kernel[(1,)](x, 8, SPAN=16)
        assert state.checked == 16  # 8 loads, 8 stores
        with pytest.raises(InterpreterError, match="OutOfBoundsAccess.*load of 1 of 9 unmasked"):
            _bump_kernel[(1,)](x, 9, SPAN=16)
    assert torch.equal(x, torch.ones(8))


# bf16 is miscomputed by Triton 3.6's CPU interpreter: fp16 / fp32 only here.
DTYPES = (torch.float16, torch.float32)
TOL = {torch.float16: 2e-3, torch.float32: 1e-3}


# ----------------------------------------------------------------------------- helpers
def make_weights(ranks, k, outs, dtype, max_rank, gen, slice_ranks=None):
    """Slots with ``ranks[s]`` (0 = left empty); ``slice_ranks`` gives per-slice ranks."""
    w = ld.LoRAWeights(len(ranks), k, outs, max_rank, dtype=dtype)
    for s, r in enumerate(ranks):
        if r == 0:
            continue
        rs = slice_ranks(s, r) if slice_ranks else [r] * len(outs)
        a = [torch.randn(ri, k, generator=gen) / k**0.5 if ri else None for ri in rs]
        b = [torch.randn(o, ri, generator=gen) / max(ri, 1) ** 0.5 if ri else None
             for o, ri in zip(outs, rs)]
        w.load(s, a, b, [0.5 + 0.3 * i + 0.1 * s for i in range(len(outs))])
    return w


def ref_y(x, w, slots):
    """float64 ``[S, T, R]`` from the stored weights; zeros where nothing contributes."""
    t, s_ = x.shape[0], w.num_slices
    y = torch.zeros(s_, t, w.max_rank, dtype=torch.float64)
    for i in range(t):
        slot = int(slots[i]) if i < len(slots) else -1
        if slot < 0 or slot >= w.num_slots or w.host_ranks[slot] == 0:
            continue
        r = w.host_ranks[slot]
        a = w.lora_a[slot, : s_ * r].double()
        ys = (a @ x[i].double()).view(s_, r) * w.scalings[slot].double().view(s_, 1)
        y[:, i, :r] = ys
    return y


def ref_delta(y, w, slots, t):
    delta = torch.zeros(t, w.total_out, dtype=torch.float64)
    for i in range(t):
        slot = int(slots[i]) if i < len(slots) else -1
        if slot < 0 or slot >= w.num_slots or w.host_ranks[slot] == 0:
            continue
        r = w.host_ranks[slot]
        for j, (off, o) in enumerate(zip(w.slice_offsets, w.out_features)):
            b = w.lora_b[slot, off : off + o, :r].double()
            delta[i, off : off + o] = b @ y[j, i, :r].double()
    return delta


def ref_y_delta(x, w, slots):
    """float64 ``y [S, T, R]`` and the delta it adds ``[T, sum(out_features)]``."""
    y = ref_y(x, w, slots)
    return y, ref_delta(y, w, slots, x.shape[0])


def rel(got, want):
    got = got.double()
    assert not torch.isnan(got).any(), "NaN in output (unwritten element?)"
    den = want.norm().item()
    num = (got - want).norm().item()
    return num / den if den else num


def adapter_rows(slots, w, t):
    keep = torch.zeros(t, dtype=torch.bool)
    for i in range(min(t, len(slots))):
        s = int(slots[i])
        keep[i] = 0 <= s < w.num_slots and w.host_ranks[s] > 0
    return keep


def check(impl_add, w, x, base, slots, batch, tol, what=""):
    t = x.shape[0]
    delta = ref_delta(ref_y(x, w, slots), w, slots, t)
    out = base.clone()
    impl_add(out, x, w, batch)
    err = rel(out.double() - base.double(), delta)
    assert err <= tol, f"{what}: rel err {err:.3g} > {tol}"
    has = adapter_rows(slots, w, t)
    assert torch.equal(out[~has], base[~has]), f"{what}: rows without adapter changed"


def poisoned(shape, dtype, gen, scale=0.5):
    return (scale * torch.randn(*shape, generator=gen)).to(dtype)


ADD_IMPLS = {
    "add_lora": lambda o, x, w, b: tk.add_lora(o, x, w, b),
    "fused": lambda o, x, w, b: tk.add_lora_fused(o, x, w, b),
    "two_pass": lambda o, x, w, b: tk.add_lora_two_pass(o, x, w, b),
    "two_pass_split3": lambda o, x, w, b: tk.add_lora_two_pass(o, x, w, b, split_k=3),
    "overlap": lambda o, x, w, b: tk.add_lora_overlap(o, x, w, b),
    "shrink_expand": lambda o, x, w, b: tk.expand(tk.shrink(x, w, b), w, b, o),
}


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", sorted(ADD_IMPLS))
def test_add_lora_mixed_ranks_slices(dtype, impl):
    """Mixed ranks incl. 1, slices of different widths, slot -1, an empty slot."""
    gen = torch.Generator().manual_seed(hash((str(dtype), impl)) % 2**31)
    outs = (48, 16, 40)
    w = make_weights([1, 0, 8, 16, 5], 96, outs, dtype, max_rank=16, gen=gen)
    t = 23
    slots = torch.randint(-1, 5, (t,), generator=gen)
    slots[:5] = torch.tensor([0, 1, -1, 2, 3])
    x = poisoned((t, 96), dtype, gen, 1.0)
    base = poisoned((t, sum(outs)), dtype, gen)
    batch = ld.LoRABatch.from_token_adapters(slots)
    check(ADD_IMPLS[impl], w, x, base, slots, batch, TOL[dtype], impl)


@pytest.mark.parametrize("impl", ["add_lora", "two_pass_split3", "shrink_expand"])
@pytest.mark.parametrize("max_rank, ranks, cap", [(64, [1, 0, 8, 16, 5], 16),
                                                  (128, [24, 3, 0, 40, 33], 64)])
def test_eager_plans_for_the_loaded_ranks(impl, max_rank, ranks, cap):
    """Loaded ranks below ``max_rank``: eager add_lora and the public expand run the plans
    of weights whose ``max_rank`` is the loaded ranks' box (``RCAP``, ``R`` staying the
    layout); right against float64 before and after a load that needs the full width."""
    from lora_dispatch.kernels.triton import launch as L

    gen = torch.Generator().manual_seed(max_rank + len(impl))
    outs = (48, 16, 40)
    w = make_weights(ranks, 96, outs, torch.float16, max_rank=max_rank, gen=gen)
    t = 37
    slots = torch.randint(-1, 5, (t,), generator=gen)
    slots[:5] = torch.tensor([0, 1, -1, 2, 3])
    x = poisoned((t, 96), torch.float16, gen, 1.0)
    base = poisoned((t, sum(outs)), torch.float16, gen)
    batch = ld.LoRABatch.from_token_adapters(slots)
    check(ADD_IMPLS[impl], w, x, base, slots, batch, TOL[torch.float16], impl)
    op, mode, split = {"add_lora": ("add", None, None), "two_pass_split3": ("add", "two_pass", 3),
                       "shrink_expand": ("expand", None, None)}[impl]
    p = L._plans(w)[(op, t, mode, split, cap)]
    e = p if op == "expand" else p.expand
    assert e.meta["RCAP"] == cap and e.meta["R"] == max_rank and e.meta["BR"] >= cap
    if op == "add":
        assert p.shrink.meta["RCAP"] == cap and p.ys[2] == cap  # a workspace of cap columns
    big = max_rank - 3
    w.load(2, [torch.randn(big, 96, generator=gen) / 10 for _ in outs],
           [torch.randn(o, big, generator=gen) / big**0.5 for o in outs], 0.7)
    check(ADD_IMPLS[impl], w, x, base, slots, batch, TOL[torch.float16], impl + " full")


@pytest.mark.parametrize("t", [1, 16, 37])
def test_graph_plan_takes_the_low_rank_path(t):
    """The plan for ``max_rank`` (what a CUDA graph replays) over ranks on both sides of
    ``configs.LOW_RANK`` and ``MID_RANK``: tiles of ranks up to them take the shrink's and
    the expand's narrower paths (``RLOW``, ``RMID``), the others the full one; all right
    against float64, for ``add_lora``'s two passes and for the public shrink (split-K
    atomics) and expand."""
    from lora_dispatch.devices import configs
    from lora_dispatch.kernels.triton import launch as L

    gen = torch.Generator().manual_seed(t)
    outs = (48, 16, 40)
    w = make_weights([1, 16, 17, 64, 0, 8, 32], 96, outs, torch.float16, max_rank=64, gen=gen)
    slots = (torch.arange(t) + 1) % 8 - 1  # slot 0 first, then every slot and -1
    x = poisoned((t, 96), torch.float16, gen, 1.0)
    base = poisoned((t, sum(outs)), torch.float16, gen)
    batch = ld.LoRABatch.from_token_adapters(slots)
    p = L._two_pass_plan(w, t, split_k=3)
    assert p.shrink.meta["RLOW"] == p.expand.meta["RLOW"] == configs.LOW_RANK
    assert p.shrink.meta["RMID"] == p.expand.meta["RMID"] == configs.MID_RANK
    assert p.shrink.meta["RCAP"] == p.expand.meta["RCAP"] == 64

    def full(o, x_, w_, b_):
        L._two_pass(p, o, x_, w_, b_, t)

    check(full, w, x, base, slots, batch, TOL[torch.float16], "two passes")
    sp = L.plan_for("shrink", w, t, split_k=2)
    assert sp.meta["RLOW"] == configs.LOW_RANK and sp.meta["ATOMIC"]
    y = tk.shrink(x, w, batch, split_k=2)
    want_y, delta = ref_y_delta(x, w, slots)
    assert rel(y, want_y) <= TOL[torch.float16]
    assert torch.equal(y[want_y == 0], torch.zeros_like(y[want_y == 0]))
    assert L.plan_for("expand", w, t).meta["RLOW"] == configs.LOW_RANK
    out = base.clone()
    tk.expand(want_y.float(), w, batch, out)
    assert rel(out.double() - base.double(), delta) <= TOL[torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_k", [None, 1, 2, 5])
def test_shrink_zeros_and_values(dtype, split_k, poison_empty):
    gen = torch.Generator().manual_seed(17 + (split_k or 0))
    w = make_weights([3, 24, 0, 1], 80, (32, 24), dtype, max_rank=32, gen=gen)
    t = 19
    slots = torch.randint(-1, 4, (t,), generator=gen)
    x = poisoned((t, 80), dtype, gen, 1.0)
    batch = ld.LoRABatch.from_token_adapters(slots)
    y = tk.shrink(x, w, batch, split_k=split_k)
    assert y.shape == (2, t, 32) and y.dtype == torch.float32
    want = ref_y(x, w, slots)
    assert rel(y, want) <= TOL[dtype]
    assert torch.equal(y[want == 0], torch.zeros_like(y[want == 0]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_expand_fp16_y_and_mixed_out_dtype(dtype, poison_empty):
    gen = torch.Generator().manual_seed(5)
    outs = (40, 24, 24)
    w = make_weights([16, 2, 9], 64, outs, dtype, max_rank=16, gen=gen)
    t = 21
    slots = torch.randint(-1, 3, (t,), generator=gen)
    batch = ld.LoRABatch.from_token_adapters(slots)
    x = poisoned((t, 64), dtype, gen, 1.0)
    y, delta = ref_y_delta(x, w, slots)
    for y_dtype in (torch.float32, torch.float16):
        for out_dtype in (torch.float32, torch.float16):
            base = poisoned((t, sum(outs)), out_dtype, gen)
            out = base.clone()
            tk.expand(y.to(y_dtype), w, batch, out)
            tol = max(TOL[dtype], TOL[out_dtype], 2e-3 if y_dtype == torch.float16 else 0)
            assert rel(out.double() - base.double(), delta) <= tol
            has = adapter_rows(slots, w, t)
            assert torch.equal(out[~has], base[~has])


@pytest.mark.parametrize("max_rank", [1, 4, 12, 20])
def test_expand_max_rank_not_a_multiple_of_8_stays_in_b(max_rank):
    """Short tiles read ``B`` up to the rank rounded up to 8 only where rows are 8-aligned:
    rounding the last slot's last row of a ``max_rank=4`` pool ran past ``B`` (junk, at times
    NaN, times the zero ``y``)."""
    gen = torch.Generator().manual_seed(40 + max_rank)
    dtype = torch.float32
    outs = (24, 9)
    ranks = [max_rank, max(1, max_rank - 1), max(1, max_rank - 3)]
    w = make_weights(ranks, 32, outs, dtype, max_rank=max_rank, gen=gen)
    t = 11
    slots = torch.tensor([2, 0, -1, 2, 1, 2, 2, 0, 1, 2, 2])
    batch = ld.LoRABatch.from_token_adapters(slots)
    x = poisoned((t, 32), dtype, gen, 1.0)
    y, delta = ref_y_delta(x, w, slots)
    base = poisoned((t, sum(outs)), dtype, gen)
    out = base.clone()
    tk.expand(y.float(), w, batch, out)  # under checked_memory (the autouse fixture)
    assert rel(out.double() - base.double(), delta) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_segments_vs_tokens(dtype):
    gen = torch.Generator().manual_seed(9)
    outs = (32, 32)
    w = make_weights([4, 16, 7], 64, outs, dtype, max_rank=16, gen=gen)
    lens, seq_slots = [5, 0, 17, 3, 9], [2, 1, 0, -1, 1]
    slots = torch.repeat_interleave(torch.tensor(seq_slots), torch.tensor(lens))
    t = int(sum(lens))
    x = poisoned((t, 64), dtype, gen, 1.0)
    base = poisoned((t, 64), dtype, gen)
    b_seg = ld.LoRABatch.from_segments(lens, seq_slots)
    b_tok = ld.LoRABatch.from_token_adapters(slots)
    o1, o2 = base.clone(), base.clone()
    tk.add_lora(o1, x, w, b_seg)
    tk.add_lora(o2, x, w, b_tok)
    assert torch.equal(o1, o2)
    check(ADD_IMPLS["two_pass"], w, x, base, slots, b_seg, TOL[dtype], "segments")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_k", [None, 1, 2])
def test_shrink_tma_descriptor_path(dtype, split_k, monkeypatch, poison_empty):
    """LORA_DISPATCH_TMA=1: consecutive tiles read through descriptors (tiles ending inside
    the next segment, rows past T, a K tail), other tiles gathered; misaligned x falls back."""
    monkeypatch.setenv("LORA_DISPATCH_TMA", "1")
    gen = torch.Generator().manual_seed(23 + (split_k or 0))
    k, outs = 320, (40, 24, 24)
    w = make_weights([16, 0, 5, 8, 1], k, outs, dtype, max_rank=16, gen=gen)
    lens, seq_slots = [37, 20, 0, 45, 3, 30], [0, 2, 1, -1, 3, 2]
    seg = torch.repeat_interleave(torch.tensor(seq_slots), torch.tensor(lens))
    slots = torch.cat([seg, torch.randint(-1, 5, (17,), generator=gen)])  # gathered tail
    t = slots.numel()
    batch = ld.LoRABatch.from_token_adapters(slots)
    x = poisoned((t, k), dtype, gen, 1.0)
    assert tk.plan_for("shrink", w, t, None, split_k).tma
    assert tk.plan_for("add", w, t, "two_pass", split_k).shrink.tma
    want = ref_y(x, w, slots)
    y = tk.shrink(x, w, batch, split_k=split_k)
    assert rel(y, want) <= TOL[dtype]
    assert torch.equal(y[want == 0], torch.zeros_like(y[want == 0]))
    base = poisoned((t, sum(outs)), dtype, gen)
    add = (lambda o, x, w, b: tk.add_lora_two_pass(o, x, w, b, split_k=split_k))
    check(add, w, x, base, slots, batch, TOL[dtype], "tma")
    xs = poisoned((t, k + 1), dtype, gen, 1.0)[:, 1:]  # misaligned: pointer loads
    assert rel(tk.shrink(xs, w, batch, split_k=split_k), ref_y(xs, w, slots)) <= TOL[dtype]
    check(add, w, xs, base, slots, batch, TOL[dtype], "tma misaligned x")


def test_shrink_tma_env(monkeypatch):
    """LORA_DISPATCH_TMA: 0 keeps pointer loads, a bad value names the variable."""
    gen = torch.Generator().manual_seed(2)
    w = make_weights([8], 64, (16,), torch.float16, max_rank=8, gen=gen)
    monkeypatch.setenv("LORA_DISPATCH_TMA", "0")
    assert not tk.plan_for("shrink", w, 4096).tma
    monkeypatch.setenv("LORA_DISPATCH_TMA", "yes")
    with pytest.raises(ValueError, match="LORA_DISPATCH_TMA"):
        tk.plan_for("shrink", w, 4095)


def test_static_batch_refilled(poison_empty):
    gen = torch.Generator().manual_seed(3)
    dtype = torch.float16
    w = make_weights([8, 0, 3], 64, (24, 8), dtype, max_rank=8, gen=gen)
    cap = 24
    batch = ld.LoRABatch.empty(cap)
    x = poisoned((cap, 64), dtype, gen, 1.0)
    base = poisoned((cap, 32), dtype, gen)
    out = base.clone()
    tk.add_lora(out, x, w, batch)  # all tokens -1: nothing changes
    assert torch.equal(out, base)
    for n in (cap, 7, 0, 13):
        slots = torch.randint(-1, 3, (n,), generator=gen)
        batch.update_(slots)
        full = torch.cat([slots, torch.full((cap - n,), -1, dtype=slots.dtype)])
        for name in ("add_lora", "fused", "two_pass_split3"):
            check(ADD_IMPLS[name], w, x, base, full, batch, TOL[dtype], f"static n={n} {name}")
        for split_k in (None, 1):  # 1: no zero fill, the kernel writes every element
            y = tk.shrink(x, w, batch, split_k=split_k)
            assert rel(y, ref_y(x, w, full)) <= TOL[dtype]
        y = tk.shrink(x[:19], w, batch, split_k=1)  # T between the tokens and the capacity
        assert rel(y, ref_y(x[:19], w, full)) <= TOL[dtype]


def test_unchecked_slots_and_tokens_past_t(poison_empty):
    """A device-built static batch may name slots >= num_slots and tokens >= T: skipped."""
    gen = torch.Generator().manual_seed(21)
    dtype = torch.float32
    w = make_weights([5, 16, 2], 48, (16, 16), dtype, max_rank=16, gen=gen)
    batch = ld.LoRABatch.empty(30)
    slots = torch.randint(-1, 3, (30,), generator=gen)
    slots[[1, 4, 9]] = torch.tensor([7, 3, 100])
    batch._fill(slots, name="token_slots")  # bypasses the host range check, like a device fill
    t = 20
    x = poisoned((t, 48), dtype, gen, 1.0)
    base = poisoned((t, 32), dtype, gen)
    s = slots[:t].clone()
    s[s >= w.num_slots] = -1
    for name in ("add_lora", "fused", "two_pass_split3", "shrink_expand"):
        check(ADD_IMPLS[name], w, x, base, s, batch, TOL[dtype], name)
    # one K split: the zero fill stays (the extra tiles push the spare ones past the grid)
    assert rel(tk.shrink(x, w, batch, split_k=1), ref_y(x, w, s)) <= TOL[dtype]
    batch._fill(slots[:t], name="token_slots")
    batch.max_slot = None  # as after a fill from a device tensor
    assert rel(tk.shrink(x, w, batch, split_k=1), ref_y(x, w, s)) <= TOL[dtype]


# (BM, BN, BK, K splits, RB, low_rank, mid_rank): the public decode tiling with and without
# the narrow paths, 3 splits (not a power of two), rank blocks shared by a program
_TICKET_CFGS = ((16, 64, 32, 4, 1, 16, 32), (16, 64, 16, 3, 1, 0, 0), (32, 16, 32, 2, 3, 0, 0))


@pytest.mark.parametrize("cfg", _TICKET_CFGS, ids=lambda c: "x".join(map(str, c)))
def test_shrink_tickets(cfg, poison_empty):
    """The one-launch public shrink: every element of a NaN-poisoned ``y`` written over
    mixed ranks (0, 1, narrow-path and full ones), slot -1, slots the host never checked, and
    three launches on one ticket buffer, which each leave it ready for the next."""
    L = sys.modules["lora_dispatch.kernels.triton.launch"]
    bm, bn, bk, split, rb, low, mid = cfg
    gen = torch.Generator().manual_seed(29 + split)
    dtype = torch.float16
    k = 128  # 3 splits: 48-column spans, the last one short
    w = make_weights([1, 40, 0, 16, 64, 24], k, (24, 16), dtype, max_rank=64, gen=gen)
    c = devices.configs.ShrinkConfig(bm, bn, bk, split, 4, 1, rb, low, mid)
    batch = ld.LoRABatch.empty(40)
    words = 64
    tk_buf = torch.zeros(2 * words, dtype=torch.int32)
    for step, t in enumerate((37, 1, 23)):
        slots = torch.randint(-1, 6, (t,), generator=gen)
        slots[0] = 4  # a rank-64 slot
        if step == 2:
            slots[[1, 5]] = torch.tensor([9, 6])  # >= num_slots: never checked on the host
        batch._fill(slots, name="token_slots")
        p = L._shrink_plan(w, t, atomic=True, split_k=split, cfg=c, fill=False)
        assert p.split == split and (p.meta["RLOW"] > 0) == (low > 0)
        tp = L.ticket_plan(p, t)
        assert tp.words <= words
        x = poisoned((t, k), dtype, gen, 1.0)
        y = torch.empty((w.num_slices, t, w.max_rank), dtype=torch.float32)
        L.shrink_ticket_kernel[tp.grid](*L._ticket_args(tp, x, x.stride(), w, batch, tk_buf, y, t),
                                       *tp.cx, num_warps=tp.num_warps, num_stages=tp.num_stages)
        s = slots.clone()
        s[s >= w.num_slots] = -1
        want = ref_y(x, w, s)
        assert rel(y, want) <= TOL[dtype], f"step {step}"
        assert torch.equal(y[want == 0], torch.zeros_like(y[want == 0])), f"step {step}"
        cnt, flag = tk_buf[:words], tk_buf[words:]
        assert torch.equal(cnt & 0xFFFF, torch.zeros_like(cnt)), "arrival counts left behind"
        assert torch.equal(flag, cnt >> 16), "a generation not published"
    assert int((tk_buf[:words] >> 16).max()) == 3  # a column of a rank-64 tile: every launch


def test_public_shrink_takes_tickets(monkeypatch, poison_empty):
    """``lora_shrink`` at decode: the one-launch path (eager, a built and a static batch),
    the zero fill before the splits where ``LORA_DISPATCH_SHRINK_TICKET=0``."""
    L = sys.modules["lora_dispatch.kernels.triton.launch"]
    gen = torch.Generator().manual_seed(31)
    w = make_weights([8, 0, 16], 64, (32, 16, 16), torch.float16, max_rank=16, gen=gen)
    calls = {"ticket": 0, "zero": 0}
    for name, kern in (("ticket", "shrink_ticket_kernel"), ("zero", "zero_kernel")):
        real = getattr(L, kern)

        class Spy:
            def __init__(self, real, name):
                self.real, self.name = real, name

            def __getitem__(self, grid):
                calls[self.name] += 1
                return self.real[grid]

        monkeypatch.setattr(L, kern, Spy(real, name))
    monkeypatch.setattr(L, "_TGROUP", None)
    monkeypatch.setattr(L, "_ZGROUP", None)
    slots = torch.tensor([2, -1, 0, 2, 1, 0, -1])
    x = poisoned((7, 64), torch.float16, gen, 1.0)
    for static in (False, True):
        batch = ld.LoRABatch.empty(16).update_(slots) if static else \
            ld.LoRABatch.from_token_adapters(slots)
        for mode, want in (("auto", "ticket"), ("0", "zero")):
            monkeypatch.setenv("LORA_DISPATCH_SHRINK_TICKET", mode)
            L._plans(w).clear()
            before = dict(calls)
            y = tk.shrink(x, w, batch, split_k=4)
            assert calls[want] == before[want] + 1
            assert sum(calls.values()) == sum(before.values()) + 1
            assert rel(y, ref_y(x, w, slots)) <= TOL[torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_and_misaligned_views(dtype):
    gen = torch.Generator().manual_seed(13)
    k, outs = 72, (40, 24)
    w = make_weights([6, 12, 1], k, outs, dtype, max_rank=16, gen=gen)
    t = 11
    slots = torch.randint(-1, 3, (t,), generator=gen)
    batch = ld.LoRABatch.from_token_adapters(slots)
    xs = poisoned((2 * t + 1, k + 5), dtype, gen, 1.0)
    x = xs[1::2, 3 : 3 + k]  # row stride 2*(k+5), misaligned start
    xt = poisoned((k, t), dtype, gen, 1.0).T  # column-major
    bs = poisoned((t, 2 * 64 + 3), dtype, gen)
    base = bs[:, 1 : 1 + 64]
    base_t = poisoned((64, t), dtype, gen).T
    for xv in (x, xt):
        for bv in (base, base_t):
            for name in ("add_lora", "fused", "two_pass_split3", "shrink_expand"):
                b0 = bv.clone()
                out = bv.clone()
                ADD_IMPLS[name](out, xv, w, batch)
                delta = ref_delta(ref_y(xv, w, slots), w, slots, t)
                assert rel(out.double() - b0.double(), delta) <= TOL[dtype], name
            assert torch.equal(bs[:, 0], bs[:, 0])


def test_empty_batch_and_no_adapters():
    gen = torch.Generator().manual_seed(1)
    dtype = torch.float16
    w = make_weights([4, 4], 32, (16,), dtype, max_rank=4, gen=gen)
    x0 = torch.zeros(0, 32, dtype=dtype)
    b0 = ld.LoRABatch.from_token_adapters(torch.zeros(0, dtype=torch.int64))
    out0 = torch.zeros(0, 16, dtype=dtype)
    tk.add_lora(out0, x0, w, b0)
    tk.expand(torch.zeros(1, 0, 4), w, b0, out0)
    assert tk.shrink(x0, w, b0).shape == (1, 0, 4)
    t = 9
    batch = ld.LoRABatch.from_token_adapters([-1] * t)
    x = poisoned((t, 32), dtype, gen, 1.0)
    base = poisoned((t, 16), dtype, gen)
    out = base.clone()
    tk.add_lora(out, x, w, batch)
    assert torch.equal(out, base)
    assert torch.equal(tk.shrink(x, w, batch), torch.zeros(1, t, 4))
    w.unload(0)
    w.unload(1)
    batch = ld.LoRABatch.from_token_adapters([0, 1] * 4 + [0])
    tk.add_lora(out, x, w, batch)
    assert torch.equal(out, base)


@pytest.mark.parametrize("seed", range(4))
def test_random_fresh_inputs(seed):
    """Random layouts, ranks and batches (fresh each seed), every schedule."""
    gen = torch.Generator().manual_seed(1000 + seed)
    dtype = DTYPES[seed % 2]
    n_slices = int(torch.randint(1, 4, (1,), generator=gen))
    outs = tuple(int(v) for v in torch.randint(1, 50, (n_slices,), generator=gen))
    k = int(torch.randint(16, 140, (1,), generator=gen))
    max_rank = int(torch.randint(1, 33, (1,), generator=gen))
    num_slots = int(torch.randint(1, 6, (1,), generator=gen))
    ranks = [int(v) for v in torch.randint(0, max_rank + 1, (num_slots,), generator=gen)]
    w = make_weights(ranks, k, outs, dtype, max_rank, gen,
                     slice_ranks=lambda s, r: [max(1, r - i) for i in range(n_slices)])
    t = int(torch.randint(1, 40, (1,), generator=gen))
    slots = torch.randint(-1, num_slots, (t,), generator=gen)
    x = poisoned((t, k), dtype, gen, 1.0)
    base = poisoned((t, sum(outs)), dtype, gen)
    batch = ld.LoRABatch.from_token_adapters(slots)
    for name in ("add_lora", "fused", "two_pass_split3", "shrink_expand"):
        check(ADD_IMPLS[name], w, x, base, slots, batch, TOL[dtype], f"seed={seed} {name}")


# ----------------------------------------------------------------------------- public API
@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "triton")
    devices.reset()
    yield
    devices.reset()


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_api_uses_triton(dtype, triton_backend):
    gen = torch.Generator().manual_seed(31)
    outs = (32, 16, 16)
    w = make_weights([16, 1, 0, 8], 64, outs, dtype, max_rank=16, gen=gen)
    assert ld.ops.selection(w).name == "triton"
    assert ld.info(device="cpu", dtype=dtype)["backend"] == "triton"
    t = 14
    slots = torch.randint(-1, 4, (t,), generator=gen)
    batch = ld.LoRABatch.from_token_adapters(slots)
    x = poisoned((t, 64), dtype, gen, 1.0)
    base = poisoned((t, 64), dtype, gen)
    y64 = ref_y(x, w, slots)
    delta = ref_delta(y64, w, slots, t)
    out = base.clone()
    assert ld.add_lora(out, x, w, batch) is out
    assert rel(out.double() - base.double(), delta) <= TOL[dtype]
    y = ld.lora_shrink(x, w, batch)
    assert rel(y, y64) <= TOL[dtype]
    out2 = base.clone()
    ld.lora_expand(y, w, batch, out2)
    assert rel(out2.double() - base.double(), delta) <= TOL[dtype]
    has = adapter_rows(slots, w, t)
    assert torch.equal(out[~has], base[~has]) and torch.equal(out2[~has], base[~has])


def test_public_api_rejects_before_launch(triton_backend):
    gen = torch.Generator().manual_seed(2)
    w = make_weights([4], 32, (16,), torch.float16, max_rank=4, gen=gen)
    batch = ld.LoRABatch.from_token_adapters([0, 0, 3])
    x = torch.randn(3, 32).half()
    out = torch.zeros(3, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="slot"):
        ld.add_lora(out, x, w, batch)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("cfg", [
    (16, 16, 16, 1, False), (16, 16, 16, 3, False), (32, 32, 64, 2, False),
    (16, 64, 16, 1, False), (64, 16, 32, 4, False), (16, 16, 16, 3, True),
    (32, 32, 64, 2, True), (16, 64, 16, 1, True), (64, 16, 32, 4, True),
])
def test_expand_config_variants(cfg):
    """Column-group loop (NCOL > 1), rank blocks smaller than max_rank, larger tiles, with
    and without the out prefetch, over slices narrower than one column group (``TRIM``:
    the loop stops at the slice's end, a partial last block included)."""
    from lora_dispatch.devices import configs as C
    from lora_dispatch.kernels.triton import launch as L

    bm, bn, br, ncol, prefetch = cfg
    gen = torch.Generator().manual_seed(sum(cfg))
    dtype = torch.float16
    outs = (72, 24, 40)
    w = make_weights([40, 3, 0, 17], 48, outs, dtype, max_rank=40, gen=gen)
    t = 29
    slots = torch.randint(-1, 4, (t,), generator=gen)
    batch = ld.LoRABatch.from_token_adapters(slots)
    x = poisoned((t, 48), dtype, gen, 1.0)
    y, delta = ref_y_delta(x, w, slots)
    base = poisoned((t, sum(outs)), dtype, gen)
    out = base.clone()
    plan = L._expand_plan(w, t, 1, cfg=C.ExpandConfig(bm, bn, br, 4, 2, ncol, prefetch))
    assert plan.meta["TRIM"] == (ncol > 1 and any(o % (bn * ncol) for o in outs))
    L._launch_expand(plan, y.float().unsqueeze(0), w, batch, out, t)
    assert rel(out.double() - base.double(), delta) <= TOL[dtype]
    has = adapter_rows(slots, w, t)
    assert torch.equal(out[~has], base[~has])


@pytest.mark.parametrize("y_early", [False, True])
@pytest.mark.parametrize("cfg", [(16, 64, 64, 1, 1, 64), (16, 16, 64, 2, 3, 64),
                                 (32, 32, 16, 1, 2, 64), (16, 16, 32, 3, 1, 64),
                                 (16, 32, 64, 1, 2, 48)])
def test_expand_ignores_y_past_each_rank(cfg, y_early):
    """``y`` past a slot's rank (NaN here, in every partial product) never reaches ``out``,
    whether the expand reads ``y`` by the rank or up to the rank box and zeroes the columns
    past the rank afterwards (``YEARLY``); one rank step (``BR >= RCAP``, with and without a
    narrower low-rank path; ``BR > RCAP`` at ``max_rank`` 48), rank loops (``BR < RCAP``),
    1-3 partial products."""
    from lora_dispatch.devices import configs as C
    from lora_dispatch.kernels.triton import launch as L

    bm, bn, br, ncol, split, max_rank = cfg
    gen = torch.Generator().manual_seed(sum(cfg) + y_early)
    dtype = torch.float16
    outs = (72, 24, 40)
    ranks = [min(r, max_rank) for r in (40, 3, 0, 17, 64, 16)]
    w = make_weights(ranks, 48, outs, dtype, max_rank=max_rank, gen=gen)
    t = 37
    slots = torch.randint(-1, 6, (t,), generator=gen)
    slots[-1] = 4  # the last row of y is read: a read past its R columns leaves the tensor
    batch = ld.LoRABatch.from_token_adapters(slots)
    x = poisoned((t, 48), dtype, gen, 1.0)
    y, delta = ref_y_delta(x, w, slots)  # [S, T, R]
    ys = torch.full((split, *y.shape), float("nan"))  # [SPLIT, S, T, R]
    for tok, s in enumerate(slots.tolist()):
        if s >= 0:
            r = w.host_ranks[s]
            parts = torch.rand(split, generator=gen)
            parts = parts / parts.sum()
            ys[:, :, tok, :r] = parts[:, None, None] * y[None, :, tok, :r].float()
    base = poisoned((t, sum(outs)), dtype, gen)
    out = base.clone()
    low = 16 if br >= 64 else 0
    ecfg = C.ExpandConfig(bm, bn, br, 4, 2, ncol, False, low, 0, y_early)
    plan = L._expand_plan(w, t, split, cfg=ecfg)
    assert plan.meta["YEARLY"] is y_early and plan.meta["RLOW"] == low
    assert plan.meta["RCAP"] == max_rank
    L._launch_expand(plan, ys, w, batch, out, t)
    assert not torch.isnan(out).any()
    assert rel(out.double() - base.double(), delta) <= TOL[dtype]
    has = adapter_rows(slots, w, t)
    assert torch.equal(out[~has], base[~has])


@pytest.mark.parametrize("cfg", [(16, 16, 64, 5, 4, 2), (32, 32, 32, 3, 4, 3),
                                 (64, 64, 128, 1, 4, 2), (16, 16, 32, 1, 4, 2, 2),
                                 (16, 16, 64, 3, 4, 2, 3), (32, 16, 32, 1, 4, 2, 4)])
def test_shrink_config_variants(cfg):
    """K splits (atomics), K tails, and 2-4 rank blocks per program over mixed ranks."""
    from lora_dispatch.devices import configs as C
    from lora_dispatch.kernels.triton import launch as L

    gen = torch.Generator().manual_seed(sum(cfg))
    dtype = torch.float32
    w = make_weights([40, 3, 0, 17], 200, (24, 8), dtype, max_rank=40, gen=gen)
    t = 33
    slots = torch.randint(-1, 4, (t,), generator=gen)
    batch = ld.LoRABatch.from_token_adapters(slots)
    x = poisoned((t, 200), dtype, gen, 1.0)
    plan = L._shrink_plan(w, t, atomic=True, cfg=C.ShrinkConfig(*cfg))
    if plan.meta["FILL"]:  # one split: the kernel writes its own zeros
        y = torch.full((1, 2, t, 40), float("nan"))
    else:
        y = torch.zeros(plan.split, 2, t, 40)
    L._launch_shrink(plan, x, w, batch, y, t)
    assert rel(y.sum(0), ref_y(x, w, slots)) <= TOL[dtype]


@pytest.mark.parametrize("cfg", [
    # shrink (block_m, block_n, block_k, rank_blocks, split_k), expand (block_n, block_r,
    # ncol, prefetch), lag
    ((16, 16, 32, 1, 1), (16, 16, 2, True), 1),
    ((16, 16, 64, 3, 2), (32, 64, 1, False), 2),
    ((32, 16, 32, 2, 3), (16, 16, 3, True), 100),
    ((16, 64, 128, 1, 1), (64, 16, 1, False), 3),
])
def test_overlap_configs_and_reset(cfg, monkeypatch):
    """The overlapped single launch (work ids, per-tile flags) over tilings, K splits and
    leads, mixed ranks up to 40 with rank blocks and ``y`` rank steps smaller than that,
    slices narrower than a column group, a K tail: equal to the reference on three calls
    that share one sync buffer, which each call leaves zeroed (the kernel's own reset)."""
    from lora_dispatch.devices import configs as C
    from lora_dispatch.kernels.triton import launch as L

    (bm, bn, bk, rb, split), (ebn, br, ncol, pre), lag = cfg
    ocfg = C.OverlapConfig(C.ShrinkConfig(bm, bn, bk, split, 4, 2, rb),
                           C.ExpandConfig(bm, ebn, br, 4, 2, ncol, pre), lag, 4, 2)
    sync = torch.full((64,), 0, dtype=torch.int32)
    monkeypatch.setattr(L, "_sync", lambda n, x: sync)
    gen = torch.Generator().manual_seed(bm + bn + bk + lag)
    dtype = torch.float16
    outs = (72, 24, 40)
    w = make_weights([40, 3, 0, 17, 1], 200, outs, dtype, max_rank=40, gen=gen)
    for t in (29, 1, 70):
        slots = torch.randint(-1, 5, (t,), generator=gen)
        batch = ld.LoRABatch.from_token_adapters(slots)
        x = poisoned((t, 200), dtype, gen, 1.0)
        base = poisoned((t, sum(outs)), dtype, gen)
        check(lambda o, x_, w_, b_: L.add_lora_overlap(o, x_, w_, b_, cfg=ocfg), w, x, base,
              slots, batch, TOL[dtype], f"overlap {cfg} T={t}")
        assert not sync.any(), f"flags or counters left set: {sync.nonzero().flatten()}"


def test_overlap_config_rejects_mismatch():
    from lora_dispatch.devices import configs as C

    sc = C.ShrinkConfig(64, 64, 64, 1, 4, 3, 1)
    with pytest.raises(ValueError, match="block_m"):
        C.OverlapConfig(sc, C.ExpandConfig(32, 64, 64, 4, 3), 8, 4, 3)
    with pytest.raises(ValueError, match="lag"):
        C.OverlapConfig(sc, C.ExpandConfig(64, 64, 64, 4, 3), 0, 4, 3)
