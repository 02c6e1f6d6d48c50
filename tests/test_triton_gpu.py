"""Triton backend on a GPU against a float64 reference: full shape grid, views, graphs, compile."""

from __future__ import annotations

import os

import pytest
import torch

import lora_dispatch as ld
import lora_dispatch.devices as devices

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CPU CI
    pytest.skip("needs a CUDA/ROCm GPU", allow_module_level=True)

tk = pytest.importorskip("lora_dispatch.kernels.triton")

TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-3}
RANKS = (1, 8, 16, 24, 64, 128)
DEV = torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(autouse=True)
def _triton_backend(monkeypatch):
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "triton")
    devices.reset()
    yield
    devices.reset()


def make_weights(num_adapters, k, outs, dtype, max_rank=128, seed=0, empty=(1,)):
    """Weights with ``num_adapters + 1`` slots; ranks cycle through RANKS; ``empty`` unloaded."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    w = ld.LoRAWeights(num_adapters + 1, k, outs, max_rank, dtype=dtype, device=DEV)
    for s in range(num_adapters):
        if s in empty and num_adapters > 1:
            continue
        r = min(RANKS[s % len(RANKS)], max_rank)
        a = [torch.randn(r, k, generator=g, device=DEV) / k**0.5 for _ in outs]
        b = [torch.randn(o, r, generator=g, device=DEV) / r**0.5 for o in outs]
        w.load(s, a, b, [0.5 + 0.25 * i + 0.1 * s for i in range(len(outs))])
    return w


def ref_y(x, w, slots):
    """float64 shrink output ``[S, T, R]`` from what the weights hold."""
    t, s_, rmax = x.shape[0], w.num_slices, w.max_rank
    y = torch.zeros(s_, t, rmax, dtype=torch.float64, device=DEV)
    for slot in range(w.num_slots):
        r = w.host_ranks[slot]
        idx = (slots[:t] == slot).nonzero().flatten()
        if r == 0 or idx.numel() == 0:
            continue
        a = w.lora_a[slot, : s_ * r].double()
        ys = (x[idx].double() @ a.T).view(-1, s_, r) * w.scalings[slot].double().view(1, s_, 1)
        y[:, idx, :r] = ys.permute(1, 0, 2)
    return y


def ref_delta(y, w, slots, t):
    delta = torch.zeros(t, w.total_out, dtype=torch.float64, device=DEV)
    for slot in range(w.num_slots):
        r = w.host_ranks[slot]
        idx = (slots[:t] == slot).nonzero().flatten()
        if r == 0 or idx.numel() == 0:
            continue
        for i, (off, o) in enumerate(zip(w.slice_offsets, w.out_features)):
            b = w.lora_b[slot, off : off + o, :r].double()
            delta[idx, off : off + o] = y[i, idx, :r].double() @ b.T
    return delta


def rel(got, want):
    den = want.norm().item()
    num = (got.double() - want).norm().item()
    assert num == num, "NaN in output"
    return num / den if den else num


def block_score(got, want, bm=16, bn=64):
    """Worst ``[bm, bn]`` block of ``got - want``: its error norm over its ``want`` norm plus
    20 times the whole error's RMS at the block's size. A block left unwritten or added
    twice scores ~0.8 or more where ``rel`` is within tolerance; bf16 rounding alone ~0.005
    (both measured on a CPU replay of the check)."""
    err = got.double() - want
    assert not torch.isnan(err).any(), "NaN in output"
    t, n = err.shape
    pt, pn = -t % bm, -n % bn
    e = torch.nn.functional.pad(err, (0, pn, 0, pt)).view((t + pt) // bm, bm, -1, bn)
    d = torch.nn.functional.pad(want, (0, pn, 0, pt)).view((t + pt) // bm, bm, -1, bn)
    floor = 20 * err.square().mean().sqrt() * (bm * bn) ** 0.5
    return (e.norm(dim=(1, 3)) / (d.norm(dim=(1, 3)) + floor + 1e-30)).max().item()


def capture(step):
    """A CUDA graph of ``step`` (warmed up once on a side stream first)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    return g


def capture_all_three(w, batch, x, base):
    """A CUDA graph of ``add_lora``, the public shrink and the public expand over ``x``:
    ``(graph, out, ys, out2)``, where each replay sets ``out = base + add_lora``,
    ``ys = lora_shrink(x)`` and ``out2 = base + lora_expand(ys)``."""
    out, out2 = base.clone(), base.clone()
    ys = torch.zeros(w.num_slices, x.shape[0], w.max_rank, device=x.device)

    def step():
        out.copy_(base)
        ld.add_lora(out, x, w, batch)
        ys.copy_(ld.lora_shrink(x, w, batch))
        out2.copy_(base)
        ld.lora_expand(ys, w, batch, out2)

    return capture(step), out, ys, out2


def token_batch(slots):
    """Device batch from per-token slots.

    Checkouts before ca3001a hit a ``batch.py`` bug in ``from_token_adapters`` on a device
    tensor (``t.min(0, keepdim=True).to``); the same batch is then built through
    ``from_segments`` with one token per sequence.
    """
    try:
        return ld.LoRABatch.from_token_adapters(slots.to(DEV))
    except AttributeError:
        return ld.LoRABatch.from_segments([1] * len(slots), slots.tolist(), device=DEV)


def random_slots(t, num_slots, gen, frac_none=0.15):
    s = torch.randint(0, num_slots, (t,), generator=gen)
    s[torch.rand(t, generator=gen) < frac_none] = -1
    return s


def check_all(w, x, base, slots, batch, dtype, out_dtype=None):
    t = x.shape[0]
    slots_dev = slots.to(DEV)
    y64 = ref_y(x, w, slots_dev)
    delta = ref_delta(y64, w, slots_dev, t)
    has = torch.zeros(t, dtype=torch.bool, device=DEV)
    for slot in range(w.num_slots):
        if w.host_ranks[slot]:
            has |= slots_dev == slot
    tol = TOL[dtype] if out_dtype is None else max(TOL[dtype], TOL[out_dtype])

    y = ld.lora_shrink(x, w, batch)
    assert y.dtype == torch.float32 and y.shape == (w.num_slices, t, w.max_rank)
    assert rel(y, y64) <= min(tol, 2e-3 if dtype != torch.bfloat16 else 1e-2)

    variants = {
        "public": lambda o: ld.add_lora(o, x, w, batch),
        "two_pass": lambda o: tk.add_lora_two_pass(o, x, w, batch),
        "overlap": lambda o: tk.add_lora_overlap(o, x, w, batch),
        "shrink+expand": lambda o: ld.lora_expand(ld.lora_shrink(x, w, batch), w, batch, o),
    }
    if t <= 64:
        variants["fused"] = lambda o: tk.add_lora_fused(o, x, w, batch)
    for name, fn in variants.items():
        out = base.clone()
        fn(out)
        err = rel(out.double() - base.double(), delta)
        assert err <= tol, f"{name}: rel err {err:.3g} > {tol}"
        worst = block_score(out.double() - base.double(), delta)
        assert worst <= 0.5, f"{name}: a block off by {worst:.3g} of its delta"
        assert torch.equal(out[~has], base[~has]), f"{name}: rows without adapter changed"


CASES = [
    # hidden, out_features, dtype, T, adapters
    (4096, (4096, 1024, 1024), torch.float16, 1, 1),
    (4096, (4096, 1024, 1024), torch.bfloat16, 16, 4),
    (4096, (4096, 1024, 1024), torch.float32, 64, 16),
    (4096, (4096, 1024, 1024), torch.bfloat16, 200, 16),  # T 65-256, rank loops over partials
    (4096, (14336, 14336), torch.float16, 96, 4),
    (4096, (4096, 1024, 1024), torch.bfloat16, 257, 128),
    (4096, (4096, 1024, 1024), torch.float16, 2048, 16),
    (4096, (4096,), torch.bfloat16, 8192, 4),
    (5120, (5120,), torch.bfloat16, 3, 2),
    (5120, (5120, 5120), torch.float16, 512, 32),
    (5120, (5120,), torch.float32, 1024, 8),
    (3584, (18944, 18944), torch.bfloat16, 33, 8),
    (3584, (18944, 18944), torch.float16, 4096, 64),
    (3584, (3584, 512, 512), torch.float32, 7, 128),
    (1000, (1000, 300, 77), torch.float16, 5, 3),
    (1000, (1000, 300, 77), torch.bfloat16, 300, 24),
    (1000, (1000,), torch.float32, 8192, 128),
    (4096, (14336, 14336), torch.bfloat16, 1, 16),
]


@pytest.mark.parametrize("hidden,outs,dtype,t,adapters", CASES)
def test_grid(hidden, outs, dtype, t, adapters):
    gen = torch.Generator().manual_seed(hidden + t + adapters)
    w = make_weights(adapters, hidden, outs, dtype, seed=t)
    x = torch.randn(t, hidden, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, dtype)
    slots = random_slots(t, adapters + 1, gen)
    check_all(w, x, base, slots, token_batch(slots), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t", [1, 40, 600])
def test_segments_and_mixed_out_dtype(dtype, t):
    gen = torch.Generator().manual_seed(t)
    w = make_weights(6, 4096, (4096, 1024, 1024), dtype, seed=3)
    lens = [t // 3, t - 2 * (t // 3), t // 3]
    seq_slots = [2, -1, 5]
    slots = torch.repeat_interleave(torch.tensor(seq_slots), torch.tensor(lens))
    batch = ld.LoRABatch.from_segments(lens, seq_slots, device=DEV)
    x = torch.randn(t, 4096, generator=gen).to(DEV, dtype)
    out_dtype = torch.float32 if dtype != torch.float32 else torch.bfloat16
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, out_dtype)
    check_all(w, x, base, slots, batch, dtype, out_dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("t", [3, 37, 1030])
def test_misaligned_strided_views(dtype, t):
    gen = torch.Generator().manual_seed(t)
    k, outs = 4096, (4096, 1024, 1024)
    w = make_weights(5, k, outs, dtype, seed=4)
    xs = torch.randn(2 * t + 1, k + 9, generator=gen).to(DEV, dtype)
    x = xs[1::2, 3 : 3 + k]  # odd row stride, misaligned start
    bs = (0.5 * torch.randn(t, 3 * (sum(outs) + 5), generator=gen)).to(DEV, dtype)
    base = bs[:, 5 : 5 + sum(outs)]  # row stride 3x, misaligned start
    xt = torch.randn(k, t, generator=gen).to(DEV, dtype).T  # column-major x
    slots = random_slots(t, 6, gen)
    batch = token_batch(slots)
    check_all(w, x, base, slots, batch, dtype)
    check_all(w, xt, base.contiguous(), slots, batch, dtype)


def test_batch_routes_past_t_and_unknown_slots():
    """Unchecked device-built static batch: slots past num_slots and tokens past T are skipped."""
    gen = torch.Generator().manual_seed(0)
    w = make_weights(3, 256, (128, 64), torch.float16, max_rank=16, seed=1)
    batch = ld.LoRABatch.empty(64, device=DEV)
    slots = torch.randint(-1, 9, (64,), generator=gen)
    batch.update_(slots.to(DEV, torch.int32))  # device tensor: no host range check
    t = 40
    x = torch.randn(t, 256, generator=gen).to(DEV, torch.float16)
    base = torch.randn(t, 192, generator=gen).to(DEV, torch.float16)
    out = base.clone()
    tk.add_lora(out, x, w, batch)
    s = slots[:t].clone()
    s[s >= w.num_slots] = -1
    delta = ref_delta(ref_y(x, w, s.to(DEV)), w, s.to(DEV), t)
    assert rel(out.double() - base.double(), delta) <= TOL[torch.float16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_graph_replay_50_batches(dtype):
    gen = torch.Generator().manual_seed(7)
    cap = 96
    w = make_weights(8, 4096, (4096, 1024, 1024), dtype, seed=5)
    batch = ld.LoRABatch.empty(cap, device=DEV)
    x = torch.randn(cap, 4096, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(cap, w.total_out, generator=gen)).to(DEV, dtype)
    g, out, ys, out2 = capture_all_three(w, batch, x, base)
    for i in range(50):
        n = int(torch.randint(0, cap + 1, (1,), generator=gen))
        slots = random_slots(n, w.num_slots, gen, frac_none=0.1 * (i % 4))
        x.copy_(torch.randn(cap, 4096, generator=gen).to(DEV, dtype))
        batch.update_(slots if i % 2 else slots.to(DEV))
        g.replay()
        eager_batch = token_batch(
            torch.cat([slots, torch.full((cap - n,), -1, dtype=slots.dtype)]))
        ref = base.clone()
        ld.add_lora(ref, x, w, eager_batch)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        y_ref = ld.lora_shrink(x, w, eager_batch)
        torch.testing.assert_close(ys, y_ref, rtol=1e-5, atol=1e-5)
        full = torch.cat([slots, torch.full((cap - n,), -1, dtype=slots.dtype)])
        delta = ref_delta(ref_y(x, w, full.to(DEV)), w, full.to(DEV), cap)
        assert rel(out.double() - base.double(), delta) <= TOL[dtype]
        assert rel(out2.double() - base.double(), delta) <= TOL[dtype]


@pytest.mark.parametrize("t", [1, 16, 64, 200, 1000])
def test_public_shrink_tickets_eager_and_graph(t):
    """The eager public shrink in one launch (K splits ordered on ticket words):
    60 refills of a static batch, each call on the main or a side stream and its ``y``
    NaN-filled before it is freed (so the next call's unwritten elements show), then 300
    calls in a row, all equal the float64 reference; every ticket word is back to zero
    arrivals with its generation published. A captured call (the zero fill's path) equals
    them."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    gen = torch.Generator().manual_seed(40 + t)
    dtype = torch.bfloat16
    w = make_weights(9, 4096, (4096, 1024, 1024), dtype, max_rank=64, seed=8)  # ranks 1-64
    assert tl_launch._ticket_plan(w, t, None, tk.plan_for("shrink", w, t)) is not None
    batch = ld.LoRABatch.empty(t, device=DEV)
    x = torch.randn(t, 4096, generator=gen).to(DEV, dtype)
    side = torch.cuda.Stream(DEV)
    for i in range(60):
        slots = random_slots(t, w.num_slots, gen, frac_none=0.15 * (i % 3))
        batch.update_(slots if i % 2 else slots.to(DEV))
        x.copy_(torch.randn(t, 4096, generator=gen).to(DEV, dtype))
        stream = side if i % 4 == 3 else torch.cuda.current_stream(DEV)
        stream.wait_stream(torch.cuda.current_stream(DEV))
        with torch.cuda.stream(stream):
            y = ld.lora_shrink(x, w, batch)
        torch.cuda.current_stream(DEV).wait_stream(stream)
        want = ref_y(x, w, slots.to(DEV))
        assert rel(y, want) <= TOL[dtype], i
        assert torch.equal(y[want == 0], torch.zeros_like(y[want == 0])), i
        y.fill_(float("nan"))
        y.record_stream(stream)
        del y
    outs = [ld.lora_shrink(x, w, batch) for _ in range(300)]
    for y in outs[::37]:
        torch.testing.assert_close(y, outs[0], rtol=1e-5, atol=1e-5)
    assert rel(outs[-1], want) <= TOL[dtype]
    torch.cuda.synchronize()
    bufs = [b for k, b in tl_launch._TICKETS.items() if k[0] == DEV.index]
    assert len(bufs) >= 2  # the main and the side stream
    for buf in bufs:
        words = buf.numel() // 2
        assert torch.equal(buf[:words] & 0xFFFF, torch.zeros_like(buf[:words]))
        assert torch.equal(buf[words:], buf[:words] >> 16)
    yg = torch.empty_like(outs[0])
    g = capture(lambda: yg.copy_(ld.lora_shrink(x, w, batch)))
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(yg, outs[0], rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph():
    gen = torch.Generator().manual_seed(11)
    dtype = torch.bfloat16
    w = make_weights(4, 1024, (1024, 256, 256), dtype, max_rank=64, seed=6)
    t = 48
    slots = random_slots(t, 5, gen)
    batch = token_batch(slots)
    x = torch.randn(t, 1024, generator=gen).to(DEV, dtype)
    base = torch.randn(t, w.total_out, generator=gen).to(DEV, dtype)

    def layer(base_out, x):
        out = base_out * 1.0
        ld.add_lora(out, x, w, batch)
        y = ld.lora_shrink(x, w, batch)
        return out, y

    compiled = torch.compile(layer, fullgraph=True)
    out_c, y_c = compiled(base, x)
    out_e, y_e = layer(base, x)
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-5)
    delta = ref_delta(ref_y(x, w, slots.to(DEV)), w, slots.to(DEV), t)
    assert rel(out_c.double() - base.double(), delta) <= TOL[dtype]


def test_backend_selected():
    assert ld.info()["backend"] == "triton"
    assert os.environ["LORA_DISPATCH_BACKEND"] == "triton"


def test_workspace_two_streams_and_threads():
    """Eager add_lora reuses one workspace per (device, stream, thread): calls interleaved on
    two streams and from two threads, with different inputs and T, all equal the reference
    (a shared buffer would let one call's shrink overwrite another's partial products)."""
    import threading

    from lora_dispatch.kernels.triton import launch as tl_launch

    tl_launch.release_workspaces()
    gen = torch.Generator().manual_seed(11)
    w = make_weights(4, 4096, (4096, 1024, 1024), torch.bfloat16, seed=2)
    cases = []
    for t in (4096, 2048, 4096, 512):
        x = torch.randn(t, 4096, generator=gen).to(DEV, torch.bfloat16)
        base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, torch.bfloat16)
        slots = random_slots(t, 5, gen)
        delta = ref_delta(ref_y(x, w, slots.to(DEV)), w, slots.to(DEV), t)
        cases.append((x, base, token_batch(slots), delta))
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    outs = [c[1].clone() for c in cases]
    torch.cuda.synchronize()
    for rep in range(3):
        for i, (x, _, batch, _) in enumerate(cases):
            with torch.cuda.stream(streams[i % 2]):
                if rep == 0:
                    ld.add_lora(outs[i], x, w, batch)
                else:  # idempotent check: recompute from base each round
                    outs[i].copy_(cases[i][1])
                    ld.add_lora(outs[i], x, w, batch)
    torch.cuda.synchronize()
    for out, (_, base, _, delta) in zip(outs, cases):
        assert rel(out.double() - base.double(), delta) <= TOL[torch.bfloat16]
    assert tl_launch.workspace_bytes() > 0

    thread_outs = [c[1].clone() for c in cases[:2]]

    def work(i):
        x, _, batch, _ = cases[i]
        with torch.cuda.stream(streams[0]):  # both threads on one stream
            for _ in range(5):
                thread_outs[i].copy_(cases[i][1])
                ld.add_lora(thread_outs[i], x, w, batch)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    torch.cuda.synchronize()
    for out, (_, base, _, delta) in zip(thread_outs, cases[:2]):
        assert rel(out.double() - base.double(), delta) <= TOL[torch.bfloat16]
    tl_launch.release_workspaces()
    assert tl_launch.workspace_bytes() == 0


@pytest.mark.parametrize("cfg", [
    # block_m, block_n, block_k, split_k, warps, stages, rank_blocks
    (128, 64, 64, 1, 8, 3, 3), (64, 64, 32, 2, 4, 4, 3), (64, 16, 128, 1, 4, 3, 3),
    (128, 32, 64, 1, 8, 3, 2), (64, 32, 64, 4, 4, 3, 4),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_shrink_rank_blocks(cfg, dtype):
    """Programs owning 2-4 rank blocks (one x tile feeds all of them) over mixed ranks 1-128,
    an empty slot, slot -1, hidden 1000 (K tail) and 4096, workspace and atomic modes."""
    from lora_dispatch.devices import configs as C
    from lora_dispatch.kernels.triton import launch as tl_launch

    gen = torch.Generator().manual_seed(sum(cfg))
    for hidden, t in ((4096, 700), (1000, 37)):
        w = make_weights(7, hidden, (4096, 1024, 1024), dtype, max_rank=64, seed=cfg[1])
        x = torch.randn(t, hidden, generator=gen).to(DEV, dtype)
        slots = random_slots(t, 8, gen)
        batch = token_batch(slots)
        want = ref_y(x, w, slots.to(DEV))
        valid = torch.zeros_like(want, dtype=torch.bool)  # [S, T, R] rows the expand reads
        for i, s in enumerate(slots.tolist()):
            if s >= 0 and w.host_ranks[s]:
                valid[:, i, : w.host_ranks[s]] = True
        for atomic in (False, True):
            plan = tl_launch._shrink_plan(w, t, atomic=atomic, cfg=C.ShrinkConfig(*cfg))
            y = torch.full((plan.split, w.num_slices, t, w.max_rank), float("nan"), device=DEV)
            if atomic:
                y.zero_()
            tl_launch._launch_shrink(plan, x, w, batch, y, t)
            got = y.sum(0)  # [S, T, R]
            assert not got[valid].isnan().any(), f"atomic={atomic}: unwritten rank rows"
            err = rel(torch.where(valid, got, 0.0), want)
            assert err <= TOL[dtype], f"atomic={atomic} hidden={hidden}: rel err {err:.3g}"
            if atomic:
                assert torch.equal(got[~valid], torch.zeros_like(got[~valid]))


def group_runs(monkeypatch, attr, group, side, fn):
    """``fn()`` on ``side`` three times: with ``launch.<attr>`` set to None (the separate
    launches compile the variants), then twice with ``group``, which must then launch once
    per call where the native tier is on. Returns the three results."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    out = []
    for use_group in (False, True, True):
        monkeypatch.setattr(tl_launch, attr, group if use_group else None)
        before = group.launches if group is not None else 0
        side.wait_stream(torch.cuda.current_stream(DEV))
        with torch.cuda.stream(side):
            out.append(fn())
        torch.cuda.current_stream(DEV).wait_stream(side)
        if use_group and group is not None and group.native:
            assert group.launches == before + 1
    torch.cuda.synchronize()
    return out


def test_add_lora_launch_group_matches_separate_launches(monkeypatch):
    """Eager add_lora issues its shrink and expand as one launch group where the native
    tier is on: the first call of a shape builds the variants through the separate
    launches, later calls take the group; the results equal the separate launches and the
    reference bit for bit, on the current stream, for any strides."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    group = tl_launch._GROUP
    gen = torch.Generator().manual_seed(5)
    w = make_weights(4, 4096, (4096, 1024, 1024), torch.bfloat16, seed=3)
    side = torch.cuda.Stream(DEV)
    for t in (1, 64, 2048):
        slots = random_slots(t, w.num_slots, gen)
        batch = token_batch(slots)
        x = torch.randn(t, 2 * 4096, generator=gen).to(DEV, torch.bfloat16)[:, ::2]
        base = torch.randn(t, w.total_out, generator=gen).to(DEV, torch.bfloat16)
        want = base.double() + ref_delta(ref_y(x, w, slots.to(DEV)), w, slots.to(DEV), t)
        outs = group_runs(monkeypatch, "_GROUP", group, side,
                          lambda b=base, x=x, batch=batch: ld.add_lora(b.clone(), x, w, batch))
        assert rel(outs[0], want) < TOL[torch.bfloat16]
        assert torch.equal(outs[1], outs[0]) and torch.equal(outs[2], outs[0])
    if group is not None and tl_launch.shrink_kernel.launch_tier == "native":
        assert group.native and group.launches > 0


def _refill_step(batch, w, t, gen, i):
    """Step ``i`` of a per-call path test: ``batch`` refilled on the device (0%, 10% or 20%
    of the tokens without an adapter), a bf16 ``x [t, 4096]`` (strided every fourth step)
    and a ``base_out``. Returns ``(slots, x, base)``."""
    slots = random_slots(t, w.num_slots, gen, frac_none=0.1 * (i % 3))
    batch.update_(slots.to(DEV))
    x = torch.randn(t, 2 * 4096, generator=gen).to(DEV, torch.bfloat16)
    x = x[:, ::2] if i % 4 == 3 else x[:, :4096].contiguous()
    base = torch.randn(t, w.total_out, generator=gen).to(DEV, torch.bfloat16)
    return slots, x, base


@pytest.mark.parametrize("t,max_rank,chunks", [(1, 128, 1), (16, 128, 1), (64, 128, 1),
                                               (256, 128, 1), (2048, 16, 1), (4096, 64, 1),
                                               (2048, 16, 2), (4096, 64, 2)])
def test_public_shrink_expand_per_call_paths_match_separate_launches(t, max_rank, chunks,
                                                                     monkeypatch):
    """The public ``lora_shrink`` / ``lora_expand`` through their armed native paths
    (``launchers/hot.c``) match the separate launches (no groups, no native entries) over
    calls with a refilled static batch, fresh and strided inputs and a side stream; once
    armed, plain calls take the native path; capture and a load since arming decline. At
    T=2048 / 4096 on Hopper the shrink (and at 4096 the rank-64 expand) run the Gluon kernels,
    whose paths encode ``x``'s / ``out``'s descriptor per call (with ``chunks`` 2 the
    ``[K / 64, T, 64]`` view of ``x``); a strided ``x`` (every fourth call) takes the pointer
    shrink."""
    from lora_dispatch import ops
    from lora_dispatch.kernels.triton import launch as tl_launch

    _force_chunks(monkeypatch, chunks)
    groups = ("_ZGROUP", "_SGROUP", "_EGROUP", "_TGROUP", "_GZGROUP", "_GSGROUP", "_GEGROUP")
    if tl_launch._EGROUP is None or tl_launch.shrink_kernel.launch_tier != "native":
        pytest.skip("the per-call path needs the native launch groups")
    gen = torch.Generator().manual_seed(31 + t)
    w = make_weights(6, 4096, (4096, 1024, 1024), torch.bfloat16, max_rank=max_rank, seed=9)
    if t >= 2048:
        xt = torch.empty(t, 4096, device=DEV, dtype=torch.bfloat16)
        sp = tl_launch._pick(tl_launch.plan_for("shrink", w, t), xt, w)
        ep = tl_launch.plan_for("expand", w, t, cap=tl_launch._cap(w, xt))
        gluon = (tl_launch._desc_kind(sp, xt, w) == 2,
                 ep.gluon is not None and tl_launch._gluon_expand_ok(ep.gluon, xt, w))
        hopper = torch.cuda.get_device_capability(DEV) == (9, 0) and tl_launch.gluon_native()
        assert gluon == ((hopper, hopper and t == 4096)), gluon
    batch = ld.LoRABatch.empty(t, device=DEV)
    side = torch.cuda.Stream(DEV)

    def separate(fn, *args):
        saved = [getattr(tl_launch, g) for g in groups]
        entries = ops._hot_shrink, ops._hot_expand
        for g in groups:
            setattr(tl_launch, g, None)
        ops._hot_shrink = ops._hot_expand = None
        try:
            return fn(*args)
        finally:
            for g, v in zip(groups, saved):
                setattr(tl_launch, g, v)
            ops._hot_shrink, ops._hot_expand = entries

    def hots():
        return (w.__dict__.get("_fl_hot_s", {}).get(t, [None])[0],
                w.__dict__.get("_fl_hot_e", {}).get(t, [None])[0])

    native = [0, 0]
    for i in range(10):
        slots, x, base = _refill_step(batch, w, t, gen, i)
        y_want = separate(ld.lora_shrink, x, w, batch)
        before = [(h, None if h is None else h.calls) for h in hots()]
        stream = side if i % 5 == 4 else torch.cuda.current_stream(DEV)
        stream.wait_stream(torch.cuda.current_stream(DEV))
        with torch.cuda.stream(stream):
            y = ld.lora_shrink(x, w, batch)
            got = ld.lora_expand(y, w, batch, base.clone())
        torch.cuda.current_stream(DEV).wait_stream(stream)
        for j, h in enumerate(hots()):
            if h is not None and h is before[j][0]:  # the same path (a switch re-arms)
                native[j] += h.calls - before[j][1]
        want = separate(ld.lora_expand, y, w, batch, base.clone())
        torch.cuda.synchronize()
        torch.testing.assert_close(y, y_want, rtol=1e-5, atol=1e-5)  # split-K atomics
        assert torch.equal(got, want), (t, i)
        s = slots.to(DEV)
        y64 = ref_y(x, w, s)
        assert rel(y, y64) <= TOL[torch.bfloat16]
        assert rel(got.double() - base.double(), ref_delta(y64, w, s, t)) <= TOL[torch.bfloat16]
    assert native[0] >= 3 and native[1] >= 3, (t, native)
    for j in range(4):  # plain calls: the native paths from the second on
        before = [None if h is None else h.calls for h in hots()]
        y = ld.lora_shrink(x, w, batch)
        ld.lora_expand(y, w, batch, base.clone())
        after = [None if h is None else h.calls for h in hots()]
        assert j == 0 or [a - b for a, b in zip(after, before)] == [1, 1], (t, j)
    calls = [h.calls for h in hots()]
    graph, got = torch.cuda.CUDAGraph(), base.clone()
    with torch.cuda.graph(graph):  # captured: the Python path (the graph owns y)
        yg = ld.lora_shrink(x, w, batch)
        ld.lora_expand(yg, w, batch, got)
    assert [h.calls for h in hots()] == calls
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(yg, y, rtol=1e-5, atol=1e-5)
    w.version += 1  # a load since arming: declines
    ld.lora_expand(ld.lora_shrink(x, w, batch), w, batch, base.clone())
    assert [h.calls for h in hots()] == calls
    w.version -= 1


def test_add_lora_per_call_path_matches_separate_launches(monkeypatch):
    """Decode add_lora's armed per-call path (one native call after the first bound launch)
    gives the separate launches' result bit for bit over many calls: a static batch
    refilled between calls, fresh and strided inputs, two streams, a second thread, and a
    larger plan that grows the workspace in between; every call launches the group once."""
    import threading

    from lora_dispatch.kernels.triton import launch as tl_launch

    group = tl_launch._GROUP
    if group is None or tl_launch.shrink_kernel.launch_tier != "native":
        pytest.skip("the per-call path needs the native launch group")
    tl_launch.release_workspaces()
    gen = torch.Generator().manual_seed(23)
    w = make_weights(6, 4096, (4096, 1024, 1024), torch.bfloat16, seed=9)
    side = torch.cuda.Stream(DEV)
    for t in (1, 16, 64):
        batch = ld.LoRABatch.empty(t, device=DEV)
        p = tl_launch.plan_for("add", w, t)
        armed, native, hot, hot_before = 0, 0, None, None
        for i in range(12):
            slots, x, base = _refill_step(batch, w, t, gen, i)
            if i == 6:  # another plan's larger workspace replaces the buffer
                big = torch.randn(512, 4096, generator=gen).to(DEV, torch.bfloat16)
                ld.add_lora(torch.zeros(512, w.total_out, device=DEV, dtype=torch.bfloat16),
                            big, w, token_batch(random_slots(512, w.num_slots, gen)))
            monkeypatch.setattr(tl_launch, "_GROUP", None)
            want = base.clone()
            ld.add_lora(want, x, w, batch)
            monkeypatch.setattr(tl_launch, "_GROUP", group)
            got = base.clone()
            stream = side if i % 5 == 4 else torch.cuda.current_stream(DEV)
            stream.wait_stream(torch.cuda.current_stream(DEV))
            before = group.launches
            if i == 9:  # another thread (its own workspace)
                th = threading.Thread(target=ld.add_lora, args=(got, x, w, batch))
                th.start()
                th.join()
            else:
                with torch.cuda.stream(stream):
                    ld.add_lora(got, x, w, batch)
            torch.cuda.current_stream(DEV).wait_stream(stream)
            if i:
                assert group.launches == before + 1
            if hot is not None and hot is p.memo[5]:
                native += hot.calls - hot_before
            hot = p.memo[5]
            armed += hot is not None
            hot_before = None if hot is None else hot.calls
            assert hot is None or type(hot).__name__ == "Hot"
            torch.cuda.synchronize()
            assert torch.equal(got, want), (t, i)
            s = slots.to(DEV)
            delta = ref_delta(ref_y(x, w, s), w, s, t)
            assert rel(got.double() - base.double(), delta) <= TOL[torch.bfloat16]
        assert armed >= 6, (t, armed)  # the per-call path was taken (not just the bound one)
        # the public op took the native per-call path (hot.c) on the main stream and
        # thread once armed there (each switch of stream, thread or workspace, and the first
        # strided x, re-arms it)
        assert native >= 3, (t, native)
        for j in range(4):  # plain calls: the native path from the second on
            hot = p.memo[5]
            calls = None if hot is None else hot.calls
            ld.add_lora(base.clone(), x, w, batch)
            assert j == 0 or (hot is p.memo[5] and hot.calls == calls + 1), (t, j)
        hot = p.memo[5]
        calls = hot.calls
        graph, got = torch.cuda.CUDAGraph(), base.clone()
        with torch.cuda.graph(graph):  # captured: the graph owns its workspace, no hot path
            ld.add_lora(got, x, w, batch)
        assert hot.calls == calls
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got, want), (t, "graph")
        w.version += 1  # a load since arming: declines
        ld.add_lora(base.clone(), x, w, batch)
        assert hot.calls == calls
        w.version -= 1
    tl_launch.release_workspaces()


def _load_seeded(w, slot, r, seed):
    """Load a rank-``r`` adapter drawn from ``seed`` into ``slot`` of hidden-4096 weights."""
    g = torch.Generator().manual_seed(seed)
    w.load(slot, [(torch.randn(r, 4096, generator=g) / 64).to(DEV) for _ in w.out_features],
           [(torch.randn(o, r, generator=g) / r**0.5).to(DEV) for o in w.out_features],
           [0.5 + 0.1 * slot + 0.2 * i for i in range(w.num_slices)])


@pytest.mark.parametrize("t", [1, 64, 256, 1024, 2048])
def test_add_lora_plans_for_loaded_ranks(t):
    """Eager add_lora and expand over max_rank-64 weights holding ranks 1-16 run the plans for
    rank 16 (``RCAP`` 16) against float64, on the per-call path where it arms (decode); a load
    of rank 64 into a slot the batch uses changes the weights' version, so the next call
    takes the full plan (right), and an unload brings the rank-16 plan back; a CUDA graph
    captured over the rank-16 weights (full plan) replays right after the rank-64 load."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    dtype, outs = torch.bfloat16, (4096, 1024, 1024)
    gen = torch.Generator().manual_seed(400 + t)
    w = ld.LoRAWeights(5, 4096, outs, 64, dtype=dtype, device=DEV)

    def load(slot, r, seed):
        _load_seeded(w, slot, r, seed)

    for slot, r in ((0, 16), (1, 1), (3, 9)):
        load(slot, r, slot)
    slots = (_segment_slots(t, w.num_slots, gen, tail=min(t, 64)) if t > 256
             else random_slots(t, w.num_slots, gen))
    slots[0] = 0
    batch = token_batch(slots)
    x = torch.randn(t, 4096, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, dtype)
    s = slots.to(DEV)

    def check(got):
        delta = ref_delta(ref_y(x, w, s), w, s, t)
        assert rel(got.double() - base.double(), delta) <= TOL[dtype]

    entry = tl_launch.plan_for("add", w, t)
    for _ in range(4):
        got = base.clone()
        ld.add_lora(got, x, w, batch)
        check(got)
    plans = tl_launch._plans(w)
    assert plans[("add", t, None, None, 16)].expand.meta["RCAP"] == 16
    y = torch.zeros(3, t, 64, device=DEV)
    y[:, :, :16] = torch.randn(3, t, 16, generator=gen).to(DEV)
    y[:, s == 1, 1:] = 0
    y[:, s == 3, 9:] = 0
    got = base.clone()
    ld.lora_expand(y, w, batch, got)
    assert ("expand", t, None, None, 16) in plans
    assert rel(got.double() - base.double(), ref_delta(y.double(), w, s, t)) <= TOL[dtype]
    out = torch.empty_like(base)

    def step():
        out.copy_(base)
        ld.add_lora(out, x, w, batch)

    g = capture(step)
    load(0, 64, 99)
    g.replay()
    check(out)
    for _ in range(2):
        got = base.clone()
        ld.add_lora(got, x, w, batch)
        check(got)
    if tl_launch._GROUP is not None and tl_launch.shrink_kernel.launch_tier == "native" \
            and t <= 256:
        assert entry.memo[5] is not None  # armed again, for the full plan
    w.unload(0)
    got = base.clone()
    ld.add_lora(got, x, w, batch)
    check(got)
    load(0, 16, 7)
    for _ in range(2):
        got = base.clone()
        ld.add_lora(got, x, w, batch)
        check(got)


@pytest.mark.parametrize("max_rank", [64, 128])
@pytest.mark.parametrize("t", [1, 16, 64, 256])
def test_graph_over_low_ranks_takes_the_narrow_path(max_rank, t):
    """A CUDA graph of add_lora, the public shrink and the public expand over a pool whose
    ranks sit on both sides of ``configs.LOW_RANK`` (16 adapters, one token each): the
    captured plans carry ``RLOW`` where the registry gives it, and every replay, over
    batches refilled with other slots, matches float64."""
    from lora_dispatch.devices import configs
    from lora_dispatch.kernels.triton import launch as tl_launch

    dtype, outs = torch.bfloat16, (4096, 1024, 1024)
    gen = torch.Generator().manual_seed(900 + t + max_rank)
    w = ld.LoRAWeights(17, 4096, outs, max_rank, dtype=dtype, device=DEV)
    ranks = (1, 8, 16, 32, 17, 24, max_rank, 16)
    for slot in range(16):
        _load_seeded(w, slot, ranks[slot % len(ranks)], 50 + slot)
    batch = ld.LoRABatch.empty(t, device=DEV)
    x = torch.randn(t, 4096, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, dtype)
    batch.update_(torch.arange(t) % 16)
    g, out, ys, out2 = capture_all_three(w, batch, x, base)
    p = tl_launch._plans(w)
    add = p[("add", t, None, None)]
    if add.shrink is not None:
        assert add.shrink.meta["RLOW"] == configs.LOW_RANK
        assert add.expand.meta["RLOW"] == (configs.LOW_RANK if t <= 64 or max_rank > 64
                                           else 0)
    assert p[("expand", t, None, None)].meta["RLOW"] == configs.LOW_RANK
    assert p[("expand", t, None, None)].meta["RMID"] == configs.MID_RANK
    for i in range(6):
        slots = (torch.arange(t) + 3 * i) % 17 - (i % 2)  # every slot, -1, the empty one
        batch.update_(slots)
        x.copy_(torch.randn(t, 4096, generator=gen).to(DEV, dtype))
        g.replay()
        s = slots.to(DEV)
        y64 = ref_y(x, w, s)
        delta = ref_delta(y64, w, s, t)
        assert rel(ys, y64) <= TOL[dtype]
        assert rel(out.double() - base.double(), delta) <= TOL[dtype], i
        assert rel(out2.double() - base.double(), delta) <= TOL[dtype], i


def _segment_slots(t, num_slots, gen, tail=64):
    """Prefill-like slots: random-length segments (slot -1 and empty slots included), then a
    ``tail`` of per-token random slots whose tiles are gathered."""
    lens, slots, left = [], [], t - tail
    while left > 0:
        n = min(left, int(torch.randint(1, 700, (1,), generator=gen)))
        lens.append(n)
        slots.append(int(torch.randint(-1, num_slots, (1,), generator=gen)))
        left -= n
    seg = torch.repeat_interleave(torch.tensor(slots), torch.tensor(lens))
    return torch.cat([seg, random_slots(tail, num_slots, gen)])


@pytest.mark.parametrize("hidden,outs,dtype,t", [
    (4096, (4096, 1024, 1024), torch.bfloat16, 8192),
    (5120, (5120,), torch.float16, 2049),
    (3584, (18944, 18944), torch.bfloat16, 4096),
    (1000, (1000, 300, 77), torch.float32, 1500),
])
def test_shrink_tma_prefill(hidden, outs, dtype, t, monkeypatch):
    """TMA shrink (LORA_DISPATCH_TMA=1) on prefill segments with mixed ranks 1-128 and a
    gathered tail: every op against float64 and against the pointer-load kernel; a
    misaligned x takes the pointer path."""
    gen = torch.Generator().manual_seed(t)
    w = make_weights(12, hidden, outs, dtype, seed=t)

    def picked(mode, x):
        assert tk.plan_for("shrink", w, t).tma == (mode == "1")

    slots, batch, base = _env_ab(w, t, hidden, dtype, gen, "LORA_DISPATCH_TMA", picked,
                                 monkeypatch)
    xs = torch.randn(t, hidden + 1, generator=gen).to(DEV, dtype)[:, 1:]
    check_all(w, xs, base, slots, batch, dtype)


def _env_ab(w, t, hidden, dtype, gen, env, picked, monkeypatch, tail=64):
    """One prefill batch (segments, then ``tail`` gathered tokens) under ``env`` = 0 and 1:
    ``picked(mode, x)`` asserts the plan's kernel, every op is checked against float64, and
    the two shrinks agree within 1e-5. Returns ``(slots, batch, base)``."""
    slots = _segment_slots(t, w.num_slots, gen, tail=tail)
    batch = token_batch(slots)
    x = torch.randn(t, hidden, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, dtype)
    ys = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(env, mode)
        w.__dict__.pop("_triton_plans", None)
        picked(mode, x)
        check_all(w, x, base, slots, batch, dtype)
        ys[mode] = ld.lora_shrink(x, w, batch)
    assert rel(ys["1"], ys["0"].double()) <= 1e-5
    return slots, batch, base


def replay_switching_batches(w, cap, dtype, gen, rounds, check_plans):
    """Capture ``add_lora`` and ``lora_shrink`` once over a static batch of ``cap`` tokens
    (``check_plans(x)`` first), then replay ``rounds`` refills alternating segment layouts
    (descriptor loads) and per-token slots (gathered tiles): equal to eager calls on the
    same slots (``add_lora`` bit for bit) and to float64."""
    batch = ld.LoRABatch.empty(cap, device=DEV)
    x = torch.randn(cap, 4096, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(cap, w.total_out, generator=gen)).to(DEV, dtype)
    out = base.clone()
    ys = torch.zeros(w.num_slices, cap, w.max_rank, device=DEV)

    def step():
        out.copy_(base)
        ld.add_lora(out, x, w, batch)
        ys.copy_(ld.lora_shrink(x, w, batch))

    check_plans(x)
    g = capture(step)
    for i in range(rounds):
        slots = (_segment_slots(cap, w.num_slots, gen, tail=64 * (i % 3)) if i % 4 else
                 random_slots(cap, w.num_slots, gen))
        x.copy_(torch.randn(cap, 4096, generator=gen).to(DEV, dtype))
        batch.update_(slots.to(DEV))
        g.replay()
        ref = base.clone()
        eager = token_batch(slots)
        ld.add_lora(ref, x, w, eager)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        torch.testing.assert_close(ys, ld.lora_shrink(x, w, eager), rtol=1e-5, atol=1e-5)
        delta = ref_delta(ref_y(x, w, slots.to(DEV)), w, slots.to(DEV), cap)
        assert rel(out.double() - base.double(), delta) <= TOL[dtype]
        assert block_score(out.double() - base.double(), delta) <= 0.5


def test_shrink_tma_graph_replay(monkeypatch):
    """One capture of the TMA path replays correctly while the batch switches between
    segment layouts (descriptor loads) and per-token slots (gathered tiles)."""
    monkeypatch.setenv("LORA_DISPATCH_TMA", "1")
    gen = torch.Generator().manual_seed(3)
    cap, dtype = 2048, torch.bfloat16
    w = make_weights(8, 4096, (4096, 1024, 1024), dtype, seed=9)
    replay_switching_batches(w, cap, dtype, gen, 12, lambda x: _tma_plans(w, cap))


def _tma_plans(w, cap):
    assert tk.plan_for("add", w, cap).shrink.tma and tk.plan_for("shrink", w, cap).tma


@pytest.mark.parametrize("ticket", ["0", "auto"])
def test_public_shrink_zero_fill_group(ticket, monkeypatch):
    """The public lora_shrink launches its zero fill and the split-K shrink as one launch
    group where the native tier is on (``LORA_DISPATCH_SHRINK_TICKET=0``), or eagerly at
    decode the one-launch shrink through its own group; equal to separate launches and to
    float64, every element past a slot's rank exactly zero, on a side stream."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    monkeypatch.setenv("LORA_DISPATCH_SHRINK_TICKET", ticket)
    attr = "_ZGROUP" if ticket == "0" else "_TGROUP"
    group = getattr(tl_launch, attr)
    gen = torch.Generator().manual_seed(8)
    w = make_weights(4, 4096, (4096, 1024, 1024), torch.bfloat16, seed=2)
    side = torch.cuda.Stream(DEV)
    for t in (1, 64, 700) if ticket == "0" else (1, 64, 256):
        assert not tk.plan_for("shrink", w, t).meta["FILL"], "one split: no fill, no group"
        slots = random_slots(t, w.num_slots, gen)
        batch = token_batch(slots)
        x = torch.randn(t, 4096, generator=gen).to(DEV, torch.bfloat16)
        want = ref_y(x, w, slots.to(DEV))
        ys = group_runs(monkeypatch, attr, group, side,
                        lambda x=x, batch=batch: ld.lora_shrink(x, w, batch))
        for y in ys:
            assert rel(y, want) <= TOL[torch.bfloat16]
            assert torch.equal(y[want == 0], torch.zeros_like(y[want == 0]))
        torch.testing.assert_close(ys[1], ys[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [1, 64, 700, 2048])
def test_add_lora_pdl_equals_plain_launches(t, monkeypatch):
    """Hopper: add_lora's expand launched with programmatic dependent launch (it waits for
    the shrink only before reading y) equals add_lora without it, bit for bit, eager over
    12 batches and replayed from one CUDA graph over 12 refills of a static batch."""
    if torch.cuda.get_device_capability(DEV) < (9, 0):
        pytest.skip("programmatic dependent launch needs compute capability 9.0")
    gen = torch.Generator().manual_seed(t)
    w = make_weights(8, 4096, (4096, 1024, 1024), torch.bfloat16, seed=t)
    x = torch.randn(t, 4096, generator=gen).to(DEV, torch.bfloat16)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, torch.bfloat16)
    batches = [random_slots(t, w.num_slots, gen, frac_none=0.1 * (i % 3)) for i in range(12)]

    def run_all(pdl):
        monkeypatch.setenv("LORA_DISPATCH_PDL", pdl)
        w.__dict__.pop("_triton_plans", None)  # plans read the variable when built
        plan = tk.plan_for("add", w, t)
        assert bool(plan.shrink.meta["PDL"]) == plan.expand.meta["PDL"] == (pdl == "1")
        outs = []
        for slots in batches:
            out = base.clone()
            ld.add_lora(out, x, w, token_batch(slots))
            outs.append(out)
        static = ld.LoRABatch.empty(t, device=DEV)
        out = base.clone()

        def step():
            out.copy_(base)
            ld.add_lora(out, x, w, static)

        g = capture(step)
        replays = []
        for slots in batches:
            static.update_(slots)
            g.replay()
            replays.append(out.clone())
        return outs, replays

    plain, plain_g = run_all("0")
    pdl, pdl_g = run_all("1")
    for a, b, c, d in zip(plain, pdl, plain_g, pdl_g, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(d, c, rtol=0, atol=0)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


@pytest.mark.parametrize("hidden,outs,t", [
    (4096, (4096,), 8192), (4096, (4096, 1024, 1024), 2048), (1000, (1000, 300, 77), 6000),
])
def test_public_shrink_one_split_writes_zeros(hidden, outs, t, poison_empty):
    """One K split: no zero fill; the kernel writes every element of a NaN-poisoned ``y``
    (slot -1 rows, an empty slot, columns past each rank), also for a static batch with T
    between its tokens and its capacity; a device-filled static batch keeps the fill."""
    gen = torch.Generator().manual_seed(t)
    w = make_weights(6, hidden, outs, torch.bfloat16, seed=t)
    assert tk.plan_for("shrink", w, t).meta["FILL"]
    x = torch.randn(t, hidden, generator=gen).to(DEV, torch.bfloat16)
    slots = random_slots(t, w.num_slots, gen, frac_none=0.3)
    static = ld.LoRABatch.empty(t + 100, device=DEV)
    for how, n in (("tokens", t), ("host", t - 50), ("device", t - 70)):
        if how == "tokens":
            batch = token_batch(slots)
        else:
            batch = static.update_(slots[:n] if how == "host" else slots[:n].to(DEV))
        assert (batch.max_slot is None) == (how == "device")
        full = torch.cat([slots[:n], torch.full((t - n,), -1, dtype=slots.dtype)]).to(DEV)
        want = ref_y(x, w, full)
        y = ld.lora_shrink(x, w, batch)
        assert rel(y, want) <= TOL[torch.bfloat16]
        assert torch.equal(y[want == 0], torch.zeros_like(y[want == 0]))


@pytest.mark.parametrize("cfg", [
    # block_m, block_n, block_r, warps, stages, column blocks
    (32, 128, 64, 4, 1, 4), (16, 64, 64, 4, 1, 1), (64, 64, 32, 4, 1, 8), (32, 64, 64, 4, 2, 1),
    (32, 128, 16, 4, 3, 4), (64, 64, 64, 4, 3, 8),  # the prefill configs (T > 1024)
    (16, 256, 16, 4, 2, 1), (16, 64, 64, 4, 1, 2),  # decode gate_up, rank 16 and 64
    (64, 128, 64, 8, 3, 16),  # 2048-column programs (rank 33-64 prefill, whole spans)
])
@pytest.mark.parametrize("hidden,outs,dtype,t", [
    (4096, (4096, 1024, 1024), torch.bfloat16, 4100),
    (3584, (18944, 18944), torch.float16, 700),
    (1000, (1000, 300, 77), torch.float32, 37),
])
def test_expand_prefetch(cfg, hidden, outs, dtype, t):
    """The expand with its out prefetch on equals it with the prefetch off bit for bit and
    float64 within tolerance: prefill segments with a gathered tail, ranks 1-128 (rank
    blocks below max_rank), slot -1, an empty slot, 1 and 2 partial products, a misaligned
    out with a padded row stride whose rows without an adapter hold NaN and must keep it."""
    from lora_dispatch.devices import configs as C
    from lora_dispatch.kernels.triton import launch as tl_launch

    bm, bn, br, warps, stages, ncol = cfg
    gen = torch.Generator().manual_seed(t + bm + ncol)
    w = make_weights(9, hidden, outs, dtype, seed=t)
    slots = _segment_slots(t, w.num_slots, gen, tail=min(64, t // 2))
    batch = token_batch(slots)
    y64 = ref_y(torch.randn(t, hidden, generator=gen).to(DEV, dtype), w, slots.to(DEV))
    delta = ref_delta(y64, w, slots.to(DEV), t)
    has = torch.zeros(t, dtype=torch.bool, device=DEV)
    for slot in range(w.num_slots):
        if w.host_ranks[slot]:
            has |= slots.to(DEV) == slot
    for split in (1, 2):
        ys = (y64.float() / split).expand(split, *y64.shape).contiguous()  # [P, S, T, R]
        pad = (0.5 * torch.randn(t, w.total_out + 3, generator=gen)).to(DEV, dtype)
        base = pad[:, 3:]  # misaligned start, row stride != width
        base[~has] = float("nan")
        outs_ = []
        for prefetch in (False, True):
            plan = tl_launch._expand_plan(
                w, t, split, cfg=C.ExpandConfig(bm, bn, br, warps, stages, ncol, prefetch))
            out = pad.clone()[:, 3:]
            assert out.stride() == base.stride() and out.data_ptr() % 16
            tl_launch._launch_expand(plan, ys, w, batch, out, t)
            assert out[~has].isnan().all(), f"prefetch={prefetch}: rows without adapter written"
            err = rel(out[has].double() - base[has].double(), delta[has])
            assert err <= TOL[dtype], f"prefetch={prefetch} split={split}: rel err {err:.3g}"
            outs_.append(out)
        torch.testing.assert_close(outs_[1], outs_[0], rtol=0, atol=0, equal_nan=True)


OVERLAP_CFGS = [
    # shrink (block_m, block_n, block_k, rank_blocks, split_k), expand (block_n, block_r,
    # ncol, prefetch), lag, warps, stages
    ((64, 64, 64, 1, 1), (64, 64, 8, True), 8, 4, 3),
    ((64, 64, 64, 2, 3), (128, 128, 4, False), 1, 4, 2),
    ((32, 16, 64, 4, 1), (128, 32, 4, False), 64, 4, 3),
    ((64, 32, 32, 3, 4), (64, 64, 2, True), 3, 8, 2),
]


def _overlap_cfg(spec):
    from lora_dispatch.devices import configs as C

    (bm, bn, bk, rb, split), (ebn, br, ncol, pre), lag, warps, stages = spec
    return C.OverlapConfig(C.ShrinkConfig(bm, bn, bk, split, warps, stages, rb),
                           C.ExpandConfig(bm, ebn, br, warps, stages, ncol, pre),
                           lag, warps, stages)


@pytest.mark.parametrize("spec", OVERLAP_CFGS)
@pytest.mark.parametrize("hidden,outs,dtype,t,adapters", [
    (4096, (4096, 1024, 1024), torch.bfloat16, 8192, 4),
    (4096, (4096, 1024, 1024), torch.float16, 2048, 128),
    (3584, (18944, 18944), torch.bfloat16, 1000, 8),
    (1000, (1000, 300, 77), torch.float32, 333, 24),
    (5120, (5120,), torch.bfloat16, 1, 2),
])
def test_overlap_configs_repeatable(spec, hidden, outs, dtype, t, adapters):
    """The overlapped single launch over several tilings and leads, mixed ranks 1-128, an
    empty slot, slot -1: equal to the reference, and bit-equal over 8 calls whose
    workspace is poisoned with NaN first (an expand program reading ``y`` before its tile's
    shrink programs wrote it would show); the flags and counters are zero after each call."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    cfg = _overlap_cfg(spec)
    if dtype == torch.float32:
        cfg = _overlap_cfg(((spec[0][0], min(spec[0][1], 64), 32, *spec[0][3:]),
                            (min(spec[1][0], 64), *spec[1][1:]), *spec[2:]))
    gen = torch.Generator().manual_seed(hidden + t)
    w = make_weights(adapters, hidden, outs, dtype, seed=t)
    x = torch.randn(t, hidden, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, dtype)
    slots = random_slots(t, adapters + 1, gen)
    batch = token_batch(slots)
    delta = ref_delta(ref_y(x, w, slots.to(DEV)), w, slots.to(DEV), t)
    first = None
    for _ in range(8):
        tl_launch.release_workspaces()
        tl_launch._workspace(4 * w.num_slices * t * w.max_rank, x).fill_(float("nan"))
        out = base.clone()
        tk.add_lora_overlap(out, x, w, batch, cfg=cfg)
        if first is None:
            first = out
            assert rel(out.double() - base.double(), delta) <= TOL[dtype]
        else:
            assert torch.equal(out, first)
        sync = tl_launch._sync(1, x)
        torch.cuda.synchronize()
        assert int(sync.abs().sum()) == 0, "overlap_kernel left its flags or counters set"


def test_overlap_graph_replay_and_streams():
    """Captured once, replayed over 30 refilled batches (its flags in a graph-owned buffer),
    interleaved with eager calls on two streams: every output equals the eager one."""
    gen = torch.Generator().manual_seed(5)
    dtype = torch.bfloat16
    cap = 2048
    w = make_weights(8, 4096, (4096, 1024, 1024), dtype, seed=9)
    batch = ld.LoRABatch.empty(cap, device=DEV)
    x = torch.randn(cap, 4096, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(cap, w.total_out, generator=gen)).to(DEV, dtype)
    out = base.clone()

    def step():
        out.copy_(base)
        tk.add_lora_overlap(out, x, w, batch)

    g = capture(step)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    side = [base.clone(), base.clone()]
    for i in range(30):
        n = int(torch.randint(0, cap + 1, (1,), generator=gen))
        slots = random_slots(n, w.num_slots, gen, frac_none=0.1 * (i % 4))
        x.copy_(torch.randn(cap, 4096, generator=gen).to(DEV, dtype))
        batch.update_(slots.to(DEV))
        full = torch.cat([slots, torch.full((cap - n,), -1, dtype=slots.dtype)])
        eb = token_batch(full)
        torch.cuda.synchronize()
        g.replay()
        for j, st in enumerate(streams):
            with torch.cuda.stream(st):
                side[j].copy_(base)
                tk.add_lora_overlap(side[j], x, w, eb)
        torch.cuda.synchronize()
        ref = base.clone()
        tk.add_lora_overlap(ref, x, w, eb)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        for s_ in side:
            torch.testing.assert_close(s_, ref, rtol=0, atol=0)
    delta = ref_delta(ref_y(x, w, full.to(DEV)), w, full.to(DEV), cap)
    assert rel(out.double() - base.double(), delta) <= TOL[dtype]


@pytest.mark.parametrize("outs,t,kind", [
    ((14336, 14336), 2048, "wide"), ((4096,), 8192, "wide"),
    ((4096, 1024, 1024), 4096, "long"), ((4096, 1024, 1000), 3072, "long"),
    ((3584, 512, 512), 5000, "long")])
def test_rank64_prefill_expand_selected(outs, t, kind):
    """Rank-64 prefill plans (on H100 / H200) the 8-warp 64 x 128 x 16-block expand on whole
    2048-column spans (``wide``), or 16 column blocks of 64 where those 1024-column groups
    fill one wave (``long``; ``TRIM`` where a slice is not a whole number of groups; the last
    case also takes the 128-token, two-split shrink), and every path through it matches the
    reference."""
    from lora_dispatch.devices import configs as C

    gen = torch.Generator().manual_seed(t)
    dtype = torch.bfloat16
    w = make_weights(6, 4096, outs, dtype, max_rank=64, seed=t)
    x = torch.randn(t, 4096, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, dtype)
    slots = random_slots(t, w.num_slots, gen)
    info = devices.current(DEV)
    m = tk.plan_for("expand", w, t).meta
    wave = C._ONE_WAVE_PER_UNIT * info.compute_units
    programs = -(-t // 64) * sum(-(-o // 1024) for o in outs)
    if info.family in C._WIDE_EXPAND_FAMILIES:
        if kind == "wide":
            assert (m["BN"], m["NCOL"]) == (128, 16), m
        elif wave / 2 < programs <= wave:
            assert (m["BN"], m["NCOL"], m["TRIM"]) == (64, 16, any(o % 1024 for o in outs)), m
        if t == 5000 and info.compute_units == 132:
            sp = tk.plan_for("add", w, t).shrink
            assert (sp.meta["BM"], sp.split) == (128, 2), sp.meta
    check_all(w, x, base, slots, token_batch(slots), dtype)


def _hopper_gluon():
    import triton

    from lora_dispatch.kernels.triton.shrink_gluon_kernel import AVAILABLE

    if torch.cuda.get_device_capability(DEV)[0] != 9:
        pytest.skip("the Gluon shrink is for Hopper (sm_90)")
    if not AVAILABLE or tuple(int(v) for v in triton.__version__.split(".")[:2]) != (3, 6):
        pytest.skip("the Gluon shrink is written for Triton 3.6")


def make_uniform(num_adapters, k, outs, dtype, rank, seed=0, empty=(1,)):
    """Weights whose loaded slots all have rank ``rank`` (= ``max_rank``)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    w = ld.LoRAWeights(num_adapters + 1, k, outs, rank, dtype=dtype, device=DEV)
    for s in range(num_adapters):
        if s in empty and num_adapters > 1:
            continue
        a = [torch.randn(rank, k, generator=g, device=DEV) / k**0.5 for _ in outs]
        b = [torch.randn(o, rank, generator=g, device=DEV) / rank**0.5 for o in outs]
        w.load(s, a, b, [0.5 + 0.25 * i + 0.1 * s for i in range(len(outs))])
    return w


def _assert_kinds(got, want):
    assert got == want


def _shrink_kinds(w, x, t):
    from lora_dispatch.kernels.triton import launch as tl_launch

    sp = tl_launch._pick(tk.plan_for("shrink", w, t), x, w)
    ap = tl_launch._pick(tk.plan_for("add", w, t, "two_pass"), x, w)
    return tl_launch._desc_kind(sp, x, w), tl_launch._desc_kind(ap.shrink, x, w)


def _force_chunks(monkeypatch, chunks: int) -> None:
    """Gluon shrink plans built from here on move ``chunks`` ``[rows, 64]`` chunks a stage
    (boxes of the operands' ``[K / 64, rows, 64]`` views where ``K`` allows)."""
    from lora_dispatch.devices import configs

    monkeypatch.setattr(configs, "_gluon_chunks",
                        lambda info, rows, split: chunks)


@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("hidden,outs,dtype,t,rank,uniform", [
    (4096, (4096, 1024, 1024), torch.bfloat16, 8192, 64, True),
    (4096, (4096, 1024, 1024), torch.float16, 2048, 16, True),
    (4096, (4096, 1024, 1024), torch.bfloat16, 3000, 24, True),
    (3584, (18944, 18944), torch.bfloat16, 4096, 64, False),
    (5120, (5120,), torch.float16, 2049, 128, False),
    (4096, (4096,), torch.bfloat16, 37, 8, True),
    (4096, (4096, 1024, 1024), torch.bfloat16, 1, 64, True),
])
def test_shrink_gluon(hidden, outs, dtype, t, rank, uniform, chunks, poison_empty,
                      monkeypatch):
    """The warp-specialized Gluon shrink (LORA_DISPATCH_GLUON=1) on prefill segments with a
    gathered tail (slot -1, an empty slot; mixed ranks up to ``rank`` where not uniform),
    with ``[64, 64]`` boxes and with two-chunk boxes of ``[K / 64, rows, 64]`` views: every
    op against float64 on NaN-poisoned outputs, the shrink against the Triton kernel; a
    misaligned x takes the Triton path."""
    _hopper_gluon()
    _force_chunks(monkeypatch, chunks)
    gen = torch.Generator().manual_seed(t + rank)
    w = (make_uniform(6, hidden, outs, dtype, rank, seed=t) if uniform else
         make_weights(12, hidden, outs, dtype, max_rank=rank, seed=t))

    def picked(mode, x):
        assert _shrink_kinds(w, x, t) == ((2, 2) if mode == "1" else (0, 0))

    slots, batch, base = _env_ab(w, t, hidden, dtype, gen, "LORA_DISPATCH_GLUON", picked,
                                 monkeypatch, tail=min(64, t // 2))
    xs = torch.randn(t, hidden + 8, generator=gen).to(DEV, dtype)[:, 1:hidden + 1]
    assert _shrink_kinds(w, xs, t) == (0, 0)
    check_all(w, xs, base, slots, batch, dtype)


def _gluon_split_ab(env, t, split_k, seed, monkeypatch, check_plan):
    """add_lora_two_pass with ``split_k`` partial products, ``env`` off then on (qkv, uniform
    rank 64, segments): the ``on`` result against float64, and against ``off`` within
    rounding. ``check_plan(plan, on)`` checks the picked plan of each run."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    _hopper_gluon()
    gen = torch.Generator().manual_seed(seed)
    w = make_uniform(4, 4096, (4096, 1024, 1024), torch.bfloat16, 64, seed=split_k)
    slots = _segment_slots(t, w.num_slots, gen)
    batch = token_batch(slots)
    x = torch.randn(t, 4096, generator=gen).to(DEV, torch.bfloat16)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, torch.bfloat16)
    outs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(env, mode)
        w.__dict__.pop("_triton_plans", None)
        p = tl_launch._pick(tk.plan_for("add", w, t, "two_pass", split_k), x, w)
        assert p.shrink.split == split_k
        check_plan(p, mode == "1")
        out = base.clone()
        tk.add_lora_two_pass(out, x, w, batch, split_k=split_k)
        outs[mode] = out
    delta = ref_delta(ref_y(x, w, slots.to(DEV)), w, slots.to(DEV), t)
    assert rel(outs["1"].double() - base.double(), delta) <= TOL[torch.bfloat16]
    torch.testing.assert_close(outs["1"], outs["0"], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("split_k,chunks", [(1, 1), (2, 1), (3, 1), (5, 1), (2, 2), (3, 2),
                                            (5, 4)])
def test_shrink_gluon_splits(split_k, chunks, monkeypatch):
    """add_lora with the Gluon shrink writing 1, 2, 3 (uneven) and 5 partial products, with
    ``[64, 64]`` boxes and two- / four-chunk boxes: equal to the Triton shrink's two-pass
    result."""
    _force_chunks(monkeypatch, chunks)

    def check(p, on):
        assert (p.shrink.gluon is not None) == on

    _gluon_split_ab("LORA_DISPATCH_GLUON", 2048, split_k, split_k, monkeypatch, check)


def test_shrink_gluon_auto_selection(monkeypatch):
    """Automatic: uniform-rank prefill takes the Gluon shrink (the public shrink below
    T ~ 4096, and above from 48 padded rank rows), eagerly where the native tier launches it
    and inside CUDA-graph capture; decode the Triton kernels; mixed ranks take it while the
    ``A`` rows past the ranks stay within half of ``x``'s rows, and loads are seen by the
    cached plan. A graph captured on
    the Gluon path replays to the eager result of the Triton kernels."""
    from lora_dispatch.devices import configs
    from lora_dispatch.kernels.triton import launch as tl_launch

    _hopper_gluon()
    monkeypatch.delenv("LORA_DISPATCH_GLUON", raising=False)
    w = make_uniform(4, 4096, (4096, 1024, 1024), torch.bfloat16, 64)
    x = torch.randn(8192, 4096, device=DEV, dtype=torch.bfloat16)
    wide = configs._GLUON_PUBLIC_WIDE_ROWS.get(devices.describe(DEV).family, 1 << 30) <= 192
    p8 = 2 if wide else 0  # the public shrink at T=8192 (qkv, rank 64)
    assert _shrink_kinds(w, x, 8192) == ((p8, 2) if tl_launch.gluon_native() else (0, 0))
    monkeypatch.setattr(tl_launch, "_NATIVE_DESC", [False])
    assert _shrink_kinds(w, x, 8192) == (0, 0)  # eager through Triton's JIT: not taken
    monkeypatch.setattr(tl_launch, "_capturing", lambda: True)
    assert _shrink_kinds(w, x, 8192) == (p8, 2)
    assert _shrink_kinds(w, x[:2048], 2048) == (2, 2)
    assert _shrink_kinds(w, x[:64], 64) == (0, 0)
    w.load(2, [torch.randn(16, 4096, device=DEV)] * 3,
           [torch.randn(o, 16, device=DEV) for o in w.out_features], 1.0)
    assert _shrink_kinds(w, x, 8192) == (p8, 2)  # 48 ranks short: 144 A rows past them
    assert _shrink_kinds(w, x[:2048], 2048) == (2, 2)
    w1 = ld.LoRAWeights(8, 4096, w.out_features, 64, dtype=torch.bfloat16, device=DEV)
    for s in range(6):  # 6 * 63 ranks short: 1134 A rows past them
        w1.load(s, [torch.randn(1, 4096, device=DEV)] * 3,
                [torch.randn(o, 1, device=DEV) for o in w.out_features], 1.0)
    assert _shrink_kinds(w1, x[:2048], 2048) == (0, 0)  # over 2048 / 2
    assert _shrink_kinds(w1, x, 8192) == (p8, 2)
    w.load(2, [torch.randn(64, 4096, device=DEV) / 64] * 3,
           [torch.randn(o, 64, device=DEV) for o in w.out_features], 1.0)
    assert _shrink_kinds(w, x, 8192) == (p8, 2)
    w16 = make_uniform(4, 4096, (4096, 1024, 1024), torch.bfloat16, 16)
    assert _shrink_kinds(w16, x[:512], 512)[1] == 2  # capturing: add_lora's early start
    monkeypatch.setattr(tl_launch, "_capturing", lambda: False)
    monkeypatch.setattr(tl_launch, "_NATIVE_DESC", [True])
    assert _shrink_kinds(w16, x[:512], 512)[1] == 0  # eager below 1024 tokens: Triton's
    assert _shrink_kinds(w16, x[:1024], 1024)[1] == 2
    monkeypatch.undo()
    monkeypatch.delenv("LORA_DISPATCH_GLUON", raising=False)
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "triton")
    monkeypatch.setattr(tl_launch, "_NATIVE_DESC", [False])  # eager: the Triton kernels
    t = 2048
    gen = torch.Generator().manual_seed(11)
    slots = _segment_slots(t, w.num_slots, gen)
    batch = token_batch(slots)
    xs = x[:t].contiguous()
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, torch.bfloat16)
    out = base.clone()

    def step():
        out.copy_(base)
        ld.add_lora(out, xs, w, batch)

    g = capture(step)
    out.zero_()
    g.replay()
    eager = base.clone()
    ld.add_lora(eager, xs, w, batch)
    torch.testing.assert_close(out, eager, rtol=2e-2, atol=6.25e-2)  # 2 bf16 ulps at 4-8
    delta = ref_delta(ref_y(xs, w, slots.to(DEV)), w, slots.to(DEV), t)
    assert rel(out.double() - base.double(), delta) <= TOL[torch.bfloat16]


def test_gluon_native_descriptors_match_triton(monkeypatch):
    """The fast launcher's native tier encodes the Gluon shrink's two TMA descriptors in C:
    bit for bit what Triton's own launch writes, over new pointers, token counts and row
    strides and repeated calls (the kept ``CUtensorMap``); eager ``add_lora`` then launches
    the Gluon shrink and the expand as one native group."""
    from lora_dispatch.kernels.triton import launch as tl_launch
    from lora_dispatch.launchers import native

    _hopper_gluon()
    if not tl_launch.gluon_native():
        pytest.skip("no native tier here")
    monkeypatch.setenv("LORA_DISPATCH_GLUON", "1")
    k = tl_launch.shrink_gluon_kernel
    w = make_uniform(4, 4096, (4096, 1024, 1024), torch.bfloat16, 64)
    gen = torch.Generator().manual_seed(3)
    buf = torch.randn(3001, 4160, generator=gen).to(DEV, torch.bfloat16)
    dense = buf[:2048, :4096].contiguous()
    views = [dense, buf[:2048, :4096], dense, buf[1:3001, 64:4160], buf[:2048, :4096], dense,
             dense[:1024]]
    for x in views:
        t = x.shape[0]
        slots = _segment_slots(t, w.num_slots, gen)
        batch = token_batch(slots)
        p = tl_launch._pick(tk.plan_for("add", w, t, "two_pass"), x, w).shrink
        got, want = (torch.full((p.split, 3, t, 64), float("nan"), device=DEV)
                     for _ in range(2))
        k[p.gluon.grid](*tl_launch._gluon_args(p.gluon, p.k_split, x, w, batch, got, t,
                                               got.stride()[:3]))
        args = tl_launch._gluon_args(p.gluon, p.k_split, x, w, batch, want, t,
                                     want.stride()[:3])
        k._fl_jit[p.gluon.grid](*args[:-1], num_warps=args[-1])
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        live = torch.tensor([v >= 0 and w.host_ranks[v] > 0 for v in slots.tolist()])
        assert live.any() and not got[:, :, live.to(DEV)].isnan().any()
    assert k.launch_tier == "native"
    mod, nat = native.load(), k._fl_ns["_fl_nat"]
    hits, variants = mod.fl_info(nat)
    assert variants >= 1 and hits >= 3, (hits, variants)
    encodes = mod.fl_encodes(nat)
    strided = buf[:t, :4096]  # another base and row stride than the last view's
    for _ in range(3):  # the same x and A: the kept maps, x's encoded once after the loop
        k[p.gluon.grid](*tl_launch._gluon_args(p.gluon, p.k_split, strided, w, batch, got, t,
                                               got.stride()[:3]))
    assert mod.fl_encodes(nat) == encodes + 1

    monkeypatch.delenv("LORA_DISPATCH_GLUON")
    w.__dict__.pop("_triton_plans", None)
    t = 2048
    slots = _segment_slots(t, w.num_slots, gen)
    batch = token_batch(slots)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, torch.bfloat16)
    assert _shrink_kinds(w, dense, t) == (2, 2)  # eager: the natively launched Gluon shrink
    launches = tl_launch._GGROUP.launches
    for _ in range(3):
        out = base.clone()
        ld.add_lora(out, dense, w, batch)
    assert tl_launch._GGROUP.launches >= launches + 2
    delta = ref_delta(ref_y(dense, w, slots.to(DEV)), w, slots.to(DEV), t)
    assert rel(out.double() - base.double(), delta) <= TOL[torch.bfloat16]


def test_shrink_gluon_graph_replay(monkeypatch):
    """One capture of add_lora and lora_shrink on the Gluon path replays correctly while the
    batch switches between segments (TMA tiles) and per-token slots (gathered tiles)."""
    _hopper_gluon()
    monkeypatch.setenv("LORA_DISPATCH_GLUON", "1")
    gen = torch.Generator().manual_seed(5)
    cap, dtype = 2048, torch.bfloat16
    w = make_uniform(8, 4096, (4096, 1024, 1024), dtype, 64, seed=4)
    replay_switching_batches(w, cap, dtype, gen, 10,
                             lambda x: _assert_kinds(_shrink_kinds(w, x, cap), (2, 2)))


def test_shrink_gluon_forced_unfit(monkeypatch):
    """LORA_DISPATCH_GLUON=1 fails loudly, naming the reason, where the shape cannot run."""
    _hopper_gluon()
    monkeypatch.setenv("LORA_DISPATCH_GLUON", "1")
    for k, outs, dtype, rank, why in (
        (1000, (1000,), torch.bfloat16, 16, "multiple of 64"),
        (4096, (4096,), torch.float32, 16, "16-bit"),
        (4096, (4096, 1024, 1024), torch.bfloat16, 128, "padded rank"),
        (4096, (1024,) * 4, torch.bfloat16, 16, "at most 3 slices"),
    ):
        w = ld.LoRAWeights(2, k, outs, rank, dtype=dtype, device=DEV)
        with pytest.raises(RuntimeError, match=why):
            tk.plan_for("shrink", w, 4096)


def _expand_kinds(w, x, out):
    """Whether the public expand and add_lora's expand take the Gluon kernel for ``out``."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    t = x.shape[0]
    e = tk.plan_for("expand", w, t).gluon
    a = tl_launch._pick(tk.plan_for("add", w, t, "two_pass"), x, w).expand.gluon
    return tuple(g is not None and tl_launch._gluon_expand_ok(g, out, w) for g in (e, a))


def _check_out_view(w, x, slots, batch, dtype, buf, cols):
    """add_lora and shrink+expand into ``buf[:, cols]`` against float64; the columns around
    the view stay as they were."""
    t = x.shape[0]
    delta = ref_delta(ref_y(x, w, slots.to(DEV)), w, slots.to(DEV), t)
    for name, fn in (("public", lambda o: ld.add_lora(o, x, w, batch)),
                     ("shrink+expand",
                      lambda o: ld.lora_expand(ld.lora_shrink(x, w, batch), w, batch, o))):
        full = buf.clone()
        view = full[:, cols]
        fn(view)
        err = rel(view.double() - buf[:, cols].double(), delta)
        assert err <= TOL[dtype], f"{name}: rel err {err:.3g}"
        worst = block_score(view.double() - buf[:, cols].double(), delta)
        assert worst <= 0.5, f"{name}: a block off by {worst:.3g} of its delta"
        keep = torch.ones(buf.shape[1], dtype=torch.bool, device=DEV)
        keep[cols] = False
        assert torch.equal(full[:, keep], buf[:, keep]), f"{name}: columns outside changed"


@pytest.mark.parametrize("hidden,outs,dtype,t,rank,uniform", [
    (4096, (4096, 1024, 1024), torch.bfloat16, 8192, 64, True),
    (4096, (4096, 1024, 1024), torch.bfloat16, 5120, 64, True),  # 128-token programs
    (4096, (4096, 1024, 1024), torch.float16, 6144, 64, False),  # 8 blocks a program
    (4096, (4096, 1024, 1024), torch.float16, 2048, 16, False),
    (3584, (18944, 18944), torch.bfloat16, 4096, 64, True),
    (4096, (14336, 14336), torch.float16, 8192, 64, False),  # 128-column blocks (H200)
    (4096, (14336, 14336), torch.bfloat16, 2048, 64, True),  # 16 of them a program
    (4096, (14336, 14336), torch.float16, 1536, 64, False),  # 8 of them a program
    (5120, (5120,), torch.float16, 2049, 128, False),
    (4096, (4096,), torch.bfloat16, 37, 32, True),
    (4096, (4096, 1024, 1024), torch.bfloat16, 1, 64, True),
])
def test_expand_gluon(hidden, outs, dtype, t, rank, uniform, poison_empty, monkeypatch):
    """The Gluon expand (LORA_DISPATCH_GLUON_EXPAND=1) on prefill segments with a gathered
    tail (slot -1, an empty slot; mixed ranks up to ``rank`` where not uniform): every op
    against float64 on NaN-poisoned workspaces; an aligned strided ``base_out`` view takes
    it, a misaligned one the Triton expand, both leave the columns around them alone."""
    _hopper_gluon()
    gen = torch.Generator().manual_seed(t + rank + 1)
    w = (make_uniform(6, hidden, outs, dtype, rank, seed=t) if uniform else
         make_weights(12, hidden, outs, dtype, max_rank=rank, seed=t))

    def picked(mode, x):
        out = torch.empty(t, w.total_out, device=DEV, dtype=dtype)
        assert _expand_kinds(w, x, out) == (mode == "1",) * 2

    slots, batch, base = _env_ab(w, t, hidden, dtype, gen, "LORA_DISPATCH_GLUON_EXPAND",
                                 picked, monkeypatch, tail=min(64, t // 2))
    n = w.total_out
    x = torch.randn(t, hidden, generator=gen).to(DEV, dtype)
    buf = (0.5 * torch.randn(t, n + 72, generator=gen)).to(DEV, dtype)
    assert _expand_kinds(w, x, buf[:, 64:64 + n]) == (True, True)
    if sum(outs) > 16384 and t >= 1024 and rank == 64:  # the H200's 128-column blocks
        wide = devices.describe(DEV).family == "h200"
        assert tk.plan_for("expand", w, t).gluon.cfg.block_n == (128 if wide else 64)
    _check_out_view(w, x, slots, batch, dtype, buf, slice(64, 64 + n))
    assert _expand_kinds(w, x, buf[:, 1:1 + n]) == (False, False)
    _check_out_view(w, x, slots, batch, dtype, buf, slice(1, 1 + n))
    assert _expand_kinds(w, x, torch.empty(t, n, device=DEV)) == (False, False)  # fp32 out


@pytest.mark.parametrize("split_k", [2, 3])
def test_expand_gluon_splits(split_k, monkeypatch):
    """add_lora's Gluon expand summing 2 and 3 (uneven) partial products of the shrink:
    equal to float64 and, within rounding, to the Triton expand's result."""

    def check(p, on):
        assert (p.expand.gluon is not None) == on
        if on:
            assert p.expand.gluon.cx[2] == split_k

    _gluon_split_ab("LORA_DISPATCH_GLUON_EXPAND", 4096, split_k, 20 + split_k, monkeypatch,
                    check)


def test_expand_gluon_auto_selection(monkeypatch):
    """Automatic: rank-64 prefill from 4096 tokens on wide slices takes the Gluon expand
    (eagerly where the native tier launches it, and inside CUDA-graph capture), mixed ranks
    included while the ``B`` columns past the ranks stay within a quarter of ``out``'s rows
    read and written; T = 2048, rank 16, a 4096-wide single slice and an fp32 ``base_out``
    keep the Triton expand; gate_up widths take it from 1024 tokens on the H200. The
    automatic add_lora on mixed ranks (both Gluon kernels, programmatic launch) and on
    gate_up at T=2048, and the public shrink and expand there, match float64."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    _hopper_gluon()
    monkeypatch.delenv("LORA_DISPATCH_GLUON_EXPAND", raising=False)
    monkeypatch.delenv("LORA_DISPATCH_GLUON", raising=False)
    dtype = torch.bfloat16
    w = make_uniform(4, 4096, (4096, 1024, 1024), dtype, 64)
    x = torch.randn(8192, 4096, device=DEV, dtype=dtype)
    out = torch.empty(8192, w.total_out, device=DEV, dtype=dtype)
    native = tl_launch.gluon_native()
    assert _expand_kinds(w, x, out) == (native, native)
    monkeypatch.setattr(tl_launch, "_NATIVE_DESC", [False])
    assert _expand_kinds(w, x, out) == (False, False)
    monkeypatch.setattr(tl_launch, "_capturing", lambda: True)
    assert _expand_kinds(w, x, out) == (True, True)
    assert _expand_kinds(w, x[:4096], out[:4096]) == (True, True)
    assert _expand_kinds(w, x[:2048], out[:2048]) == (False, False)
    assert _expand_kinds(w, x, out.float()) == (False, False)
    w16 = make_uniform(4, 4096, (4096, 1024, 1024), dtype, 16)
    assert _expand_kinds(w16, x, out) == (False, False)
    w1 = make_uniform(4, 4096, (4096,), dtype, 64)
    assert _expand_kinds(w1, x, out[:, :4096]) == (False, False)
    wg = make_uniform(2, 4096, (14336, 14336), dtype, 64)  # gate_up: from 1024 tokens (H200)
    og = torch.empty(2048, wg.total_out, device=DEV, dtype=dtype)
    h200 = devices.describe(DEV).family == "h200"
    assert _expand_kinds(wg, x[:2048], og) == (h200, h200)
    assert _expand_kinds(wg, x[:1024], og[:1024]) == (h200, h200)
    assert _expand_kinds(wg, x[:1000], og[:1000]) == (False, False)
    w.load(2, [torch.randn(16, 4096, device=DEV) / 64] * 3,
           [torch.randn(o, 16, device=DEV) / 4 for o in w.out_features], 1.0)
    assert _expand_kinds(w, x, out) == (True, True)  # 48 B columns past the ranks
    assert _expand_kinds(w, x[:4096], out[:4096]) == (True, True)
    monkeypatch.undo()
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "triton")
    monkeypatch.delenv("LORA_DISPATCH_GLUON_EXPAND", raising=False)
    t = 8192
    gen = torch.Generator().manual_seed(12)
    slots = _segment_slots(t, w.num_slots, gen)
    batch = token_batch(slots)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, dtype)
    got = base.clone()
    ld.add_lora(got, x, w, batch)
    native = tl_launch.gluon_native()
    assert _expand_kinds(w, x, got)[1] == native and _shrink_kinds(w, x, t)[1] == 2 * native
    delta = ref_delta(ref_y(x, w, slots.to(DEV)), w, slots.to(DEV), t)
    assert rel(got.double() - base.double(), delta) <= TOL[dtype]
    w.load(2, [torch.randn(64, 4096, device=DEV) / 64] * 3,
           [torch.randn(o, 64, device=DEV) / 8 for o in w.out_features], 1.0)
    assert _expand_kinds(w, x, out) == (native, native)  # uniform again
    t = 2048  # gate_up widths: the 128-column Gluon expand eagerly on the H200
    wg = make_uniform(3, 4096, (14336, 14336), dtype, 64)
    slots = _segment_slots(t, wg.num_slots, gen)
    batch = token_batch(slots)
    base = (0.5 * torch.randn(t, wg.total_out, generator=gen)).to(DEV, dtype)
    h200 = devices.describe(DEV).family == "h200"
    assert _expand_kinds(wg, x[:t], base)[1] == (native and h200)
    delta = ref_delta(ref_y(x[:t], wg, slots.to(DEV)), wg, slots.to(DEV), t)
    got = base.clone()
    ld.add_lora(got, x[:t], wg, batch)
    assert rel(got.double() - base.double(), delta) <= TOL[dtype]
    y = ld.lora_shrink(x[:t], wg, batch)
    got = base.clone()
    ld.lora_expand(y, wg, batch, got)
    assert rel(got.double() - base.double(), delta) <= TOL[dtype]


@pytest.mark.parametrize("t", [4096, 8192])
def test_add_lora_gluon_cut_to_loaded_ranks(t, monkeypatch):
    """Eager add_lora over max_rank-64 weights whose loaded ranks are 1-16 runs the plan for
    rank 16 (the Gluon shrink with 16-row ``A`` boxes, the rank-16 Triton expand), on
    segments with a gathered tail, slot -1 and an empty slot, against float64 (NaN in the
    rows without an adapter, which must stay so); a CUDA graph captured meanwhile (the full
    plan: Gluon expand) replays right after a rank-64 adapter is loaded into a slot the
    batch uses, and so do eager calls (the full plan again)."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    _hopper_gluon()
    if not tl_launch.gluon_native():
        pytest.skip("eager Gluon launches need the fast launcher's native tier")
    monkeypatch.delenv("LORA_DISPATCH_GLUON", raising=False)
    monkeypatch.delenv("LORA_DISPATCH_GLUON_EXPAND", raising=False)
    dtype, outs = torch.bfloat16, (4096, 1024, 1024)
    gen = torch.Generator().manual_seed(t)
    w = ld.LoRAWeights(6, 4096, outs, 64, dtype=dtype, device=DEV)

    def load(slot, r, seed):
        _load_seeded(w, slot, r, seed)

    for slot, r in ((0, 16), (2, 1), (3, 9), (4, 16)):
        load(slot, r, slot)
    slots = _segment_slots(t, w.num_slots, gen)
    batch = token_batch(slots)
    x = torch.randn(t, 4096, generator=gen).to(DEV, dtype)
    base = (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, dtype)
    base[slots.to(DEV) == -1] = float("nan")  # rows without an adapter stay as they are

    def check(got):
        keep = slots.to(DEV) != -1
        assert torch.isnan(got[~keep]).all()
        delta = ref_delta(ref_y(x, w, slots.to(DEV)), w, slots.to(DEV), t)
        assert rel(got[keep].double() - base[keep].double(), delta[keep]) <= TOL[dtype]

    got = base.clone()
    ld.add_lora(got, x, w, batch)
    cap = tl_launch._plans(w)[("add", t, None, None, 16)]
    assert cap.alt.shrink.gluon.cfg.block_r == 16 and cap.alt.expand.gluon is None
    assert tl_launch._desc_kind(tl_launch._pick(cap, x, w).shrink, x, w) == 2
    check(got)
    out = torch.empty_like(base)

    def step():
        out.copy_(base)
        ld.add_lora(out, x, w, batch)

    g = capture(step)
    used = [s_ for s_ in (0, 3, 4) if (slots == s_).any()]
    assert used
    load(used[0], 64, 99)
    g.replay()
    check(out)
    got = base.clone()
    ld.add_lora(got, x, w, batch)
    check(got)


def test_expand_gluon_graph_replay(monkeypatch):
    """One capture of add_lora on the Gluon expand replays correctly (bit for bit against
    eager calls) while the batch switches between segments (TMA boxes) and per-token slots
    (pointer rows)."""
    _hopper_gluon()
    monkeypatch.setenv("LORA_DISPATCH_GLUON_EXPAND", "1")
    gen = torch.Generator().manual_seed(6)
    cap, dtype = 2048, torch.bfloat16
    w = make_uniform(8, 4096, (4096, 1024, 1024), dtype, 64, seed=5)
    replay_switching_batches(
        w, cap, dtype, gen, 10,
        lambda x: _assert_kinds(_expand_kinds(
            w, x, torch.empty(cap, w.total_out, device=DEV, dtype=dtype)), (True, True)))


def test_expand_gluon_forced_unfit(monkeypatch):
    """LORA_DISPATCH_GLUON_EXPAND=1 fails loudly, naming the reason, where it cannot run."""
    _hopper_gluon()
    monkeypatch.setenv("LORA_DISPATCH_GLUON_EXPAND", "1")
    for k, outs, dtype, rank, why in (
        (1000, (1000,), torch.bfloat16, 16, "multiple of 64"),
        (4096, (4096,), torch.float32, 16, "16-bit"),
        (4096, (4096, 1024, 1024), torch.bfloat16, 24, "max_rank must be one of"),
    ):
        w = ld.LoRAWeights(2, k, outs, rank, dtype=dtype, device=DEV)
        with pytest.raises(RuntimeError, match=why):
            tk.plan_for("expand", w, 4096)


@pytest.mark.parametrize("shrink_gluon,expand_gluon,attr,chunks", [
    ("1", "1", "_GXGROUP", 1), ("0", "1", "_XGROUP", 1), ("1", "0", "_GGROUP", 1),
    ("1", "1", "_GXGROUP", 2), ("1", "0", "_GGROUP", 2)])
def test_add_lora_prefill_groups_match_separate_launches(shrink_gluon, expand_gluon, attr,
                                                         chunks, monkeypatch):
    """Eager prefill add_lora on the descriptor plans (Gluon shrink and / or Gluon expand)
    issues both kernels as one bound launch group, then through the armed per-call path:
    bit for bit the separate launches' result, on fresh ``x`` / ``base_out`` each call; an
    ``x`` or ``base_out`` off the TMA contract (strided, misaligned, fp32) falls back to the
    pointer kernels and still matches float64. ``chunks`` 2: the Gluon shrink reads two-chunk
    boxes of ``x``'s ``[K / 64, T, 64]`` view (its descriptor encoded per call in C)."""
    from lora_dispatch.kernels.triton import launch as tl_launch

    _hopper_gluon()
    _force_chunks(monkeypatch, chunks)
    group = getattr(tl_launch, attr)
    if group is None or not tl_launch.gluon_native():
        pytest.skip("the prefill launch groups need the native tier")
    monkeypatch.setenv("LORA_DISPATCH_GLUON", shrink_gluon)
    monkeypatch.setenv("LORA_DISPATCH_GLUON_EXPAND", expand_gluon)
    monkeypatch.setenv("LORA_DISPATCH_BACKEND", "triton")
    dtype, t = torch.bfloat16, 4096
    w = make_uniform(4, 4096, (4096, 1024, 1024), dtype, 64, seed=8)
    gen = torch.Generator().manual_seed(31)
    slots = _segment_slots(t, w.num_slots, gen)
    batch = token_batch(slots)
    s = slots.to(DEV)
    entry = tl_launch.plan_for("add", w, t)
    cases = [(torch.randn(t, 4096, generator=gen).to(DEV, dtype),
              (0.5 * torch.randn(t, w.total_out, generator=gen)).to(DEV, dtype))
             for _ in range(6)]
    monkeypatch.setattr(tl_launch, attr, None)
    wants = []
    for x, base in cases:  # separate launches (they build the kernels' native tables)
        wants.append(base.clone())
        ld.add_lora(wants[-1], x, w, batch)
    assert group.native
    monkeypatch.setattr(tl_launch, attr, group)
    outs = []
    for i, ((x, base), want) in enumerate(zip(cases, wants)):
        before, hot, took = group.launches, entry.memo[5], []
        if hot is not None:  # armed after the first bound launch (call 0 or 1)
            entry.memo[5] = lambda *a, hot=hot, took=took: took.append(hot(*a)) or took[-1]
        got = base.clone()
        ld.add_lora(got, x, w, batch)
        assert torch.equal(got, want), f"call {i}"
        if i:
            assert group.launches == before + 1, f"call {i}"
        if i >= 2:
            assert took == [True], f"call {i}: the armed per-call path launched"
        outs.append((x, base, got))
    x, base, got = outs[-1]
    delta = ref_delta(ref_y(x, w, s), w, s, t)
    assert rel(got.double() - base.double(), delta) <= TOL[dtype]
    entry.memo[5] = None  # the public op through the native path itself (no wrapper)
    for i, ((x, base), want) in enumerate(zip(cases[:3], wants)):
        got = base.clone()
        ld.add_lora(got, x, w, batch)
        assert torch.equal(got, want), f"native call {i}"
        hot = entry.memo[5]
        assert type(hot).__name__ == "Hot" and hot.calls == i, f"native call {i}"
    buf = torch.randn(t, 4096 + 8, generator=gen).to(DEV, dtype)
    outs_of = {
        "aligned": lambda: base.clone(),
        "fp32": lambda: base.float(),
        "skew": lambda: torch.cat([base[:, :1], base], 1)[:, 1:],  # 2-byte base, odd stride
    }
    for xv, kind in ((buf[:, 1:4097], "aligned"), (x, "fp32"), (x, "skew"),
                     (buf[:, 1:4097], "skew")):
        x_ok = xv.data_ptr() % 16 == 0
        out_ok = kind == "aligned"
        takes = {"_GXGROUP": x_ok and out_ok, "_XGROUP": out_ok, "_GGROUP": x_ok}[attr]
        for _ in range(2):  # the first call of a new variant may compile it outside the group
            before = group.launches
            got = outs_of[kind]()
            assert (got.data_ptr() % 16 == 0) == (kind != "skew")
            ld.add_lora(got, xv, w, batch)
        assert group.launches == before + takes, (attr, x_ok, kind)
        delta = ref_delta(ref_y(xv, w, s), w, s, t)
        assert rel(got.double() - base.double(), delta) <= TOL[dtype]
