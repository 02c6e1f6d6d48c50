"""Test helpers: random adapters, a float64 naive reference, tolerance table."""

from __future__ import annotations

import torch

import lora_dispatch as ld
from lora_dispatch.check import TOLERANCE, delta_error

# ||out - ref|| / ||ref|| over the delta (DESIGN.md), one table for tests and `check`
TOL = TOLERANCE


def random_adapter(in_features, out_features, rank, generator=None, slice_ranks=None):
    """One adapter in PEFT layout: (A list [r_i, K], B list [out_i, r_i])."""
    a, b = [], []
    for i, o in enumerate(out_features):
        r = rank if slice_ranks is None else slice_ranks[i]
        if r == 0:
            a.append(None)
            b.append(None)
            continue
        a.append(torch.randn(r, in_features, generator=generator) / in_features**0.5)
        b.append(torch.randn(o, r, generator=generator) / r**0.5)
    return a, b


def make_weights(
    num_slots,
    in_features,
    out_features,
    max_rank,
    ranks,
    dtype=torch.float32,
    device="cpu",
    seed=0,
    scalings=None,
):
    """LoRAWeights with ``ranks[s]`` (0 = leave empty) and the adapters loaded, as loaded."""
    g = torch.Generator().manual_seed(seed)
    w = ld.LoRAWeights(num_slots, in_features, out_features, max_rank, dtype=dtype, device=device)
    adapters = {}
    for s, r in enumerate(ranks):
        if r == 0:
            continue
        a, b = random_adapter(in_features, w.out_features, r, g)
        c = 0.5 + s * 0.25 if scalings is None else scalings[s]
        w.load(s, a, b, c)
        # keep what the weights hold (rounded to dtype) for an exact-input reference
        adapters[s] = (
            [t.to(dtype) if t is not None else None for t in a],
            [t.to(dtype) if t is not None else None for t in b],
            c,
        )
    return w, adapters


def naive_delta(x, out_features, adapters, token_slots):
    """float64 ``[T, sum(out)]`` delta by a loop over tokens and slices."""
    t = x.shape[0]
    total = sum(out_features)
    delta = torch.zeros(t, total, dtype=torch.float64)
    xs = x.detach().to("cpu", torch.float64)
    slots = [int(s) for s in token_slots]
    for i in range(t):
        s = slots[i] if i < len(slots) else -1
        if s < 0 or s not in adapters:
            continue
        a_list, b_list, c = adapters[s]
        off = 0
        for j, o in enumerate(out_features):
            cj = c[j] if isinstance(c, (list, tuple)) else c
            if a_list[j] is not None:
                a = a_list[j].double()
                b = b_list[j].double()
                delta[i, off : off + o] = cj * (xs[i] @ a.T) @ b.T
            off += o
    return delta


rel_err = delta_error  # the metric of lora_dispatch.check (ulp-aware, DESIGN.md)


def untouched_rows(token_slots, adapters, t):
    return [
        i for i in range(t) if (int(token_slots[i]) if i < len(token_slots) else -1) not in adapters
    ]


class HotGroup:
    """A launch group's ``hot`` pieces with a scripted native call (CPU: device -1), and a
    scripted ``bind`` / ``launch_bound`` (``binds``: the varying indices of each bind)."""

    def __init__(self, dev: int = -1):
        self.ok, self.calls, self.launches, self.result, self.stream = True, [], 0, None, 7
        self.dev, self.binds = dev, []

    def available(self):
        return True

    def bind(self, slots, varying):
        self.binds.append(varying)
        return f"B{len(self.binds)}"

    def launch_bound(self, bound, grids, values):
        self.calls.append((bound, "tables", grids, self.stream, self.dev, *values))
        self.launches += self.result is None
        return self.result is None

    def hot(self, bound):
        def launch(*args):
            self.calls.append(args)
            return self.result

        return (lambda: self.ok), launch, "tables", lambda dev: self.stream, self.dev


def same_arg(a, b) -> bool:
    """Whether two launch arguments are the same: the same object, an equal int, or tensor
    descriptors (built per call) over the same base with equal shape, strides, block and
    layout."""
    if hasattr(a, "block_shape"):
        return (a.base is b.base and (a.shape, a.strides, a.block_shape) ==
                (b.shape, b.strides, b.block_shape) and a.layout == b.layout)
    return a is b or (type(a) is int and a == b)
