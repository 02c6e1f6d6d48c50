"""``lora-dispatch check``: the selected backend against a float64 truth on this device."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .batch import LoRABatch
from .ops import add_lora, lora_expand, lora_shrink, selection
from .weights import LoRAWeights

# ||out - ref|| / ||ref|| over the delta (DESIGN.md)
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-3}


@dataclass(frozen=True)
class Case:
    """One check: layer shape, slot ranks (0 = empty slot) and token count."""

    name: str
    in_features: int
    out_features: tuple[int, ...]
    ranks: tuple[int, ...]
    tokens: int


CPU_CASES = (
    Case("tiny", 64, (32,), (4, 1, 0, 8), 9),
    Case("fused-odd", 1000, (200, 24, 8), (24, 1, 0, 9, 16), 33),
    Case("decode-qkv", 512, (512, 128, 128), tuple(range(1, 17)), 16),
    Case("prefill", 256, (384, 384), (16, 8, 0, 4), 300),
)
GPU_CASES = CPU_CASES + (
    Case("llama-qkv-decode", 4096, (4096, 1024, 1024), (16, 64, 8, 1, 0, 24, 128, 16), 64),
    Case("llama-gate-up", 4096, (14336, 14336), (16, 64, 1, 128), 257),
    Case("hidden-5120", 5120, (5120,), (8, 24, 64), 1000),
    Case("hidden-3584-prefill", 3584, (3584, 512, 512), (64, 16, 1, 8), 4096),
)


def _truth(x, adapters, slots, out_features):
    """float64 delta ``[T, sum(out)]`` computed per used slot."""
    t = x.shape[0]
    xd = x.double().cpu()
    delta = torch.zeros(t, sum(out_features), dtype=torch.float64)
    for s, (a_list, b_list, c) in adapters.items():
        idx = (slots == s).nonzero().flatten()
        if not idx.numel():
            continue
        off = 0
        for a, b, o in zip(a_list, b_list, out_features):
            delta[idx, off : off + o] = c * (xd[idx] @ a.double().T) @ b.double().T
            off += o
    return delta


_MANTISSA = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}


def ulp(t: torch.Tensor) -> torch.Tensor:
    """float64 spacing of ``t``'s dtype at each element of ``t``, on the CPU."""
    v = t.detach().to("cpu", torch.float64).abs().clamp(min=torch.finfo(t.dtype).tiny)
    return torch.ldexp(torch.ones_like(v), torch.frexp(v)[1] - 1 - _MANTISSA[t.dtype])


def delta_error(out: torch.Tensor, base: torch.Tensor, ref_delta: torch.Tensor) -> float:
    """``||(out - base) - ref|| / ||ref||`` in float64, less the output's own rounding.

    Storing ``base + delta`` in ``out``'s dtype moves each element by up to half an ulp of
    the result whatever the kernel does, so one ulp per element is forgiven: tiny deltas on
    large base values then do not fail on rounding alone. A kernel that drops the delta still
    scores ~1. Returns the absolute excess when ``ref_delta`` is zero.

    Parameters
    ----------
    out, base : Tensor [T, N]
        Result and the base output it was added to (any device, fp16/bf16/fp32).
    ref_delta : Tensor [T, N] float64 (CPU)
        The exact delta.
    """
    d = out.detach().to("cpu", torch.float64) - base.detach().to("cpu", torch.float64)
    excess = ((d - ref_delta).abs() - ulp(out)).clamp(min=0).norm().item()
    den = ref_delta.norm().item()
    return excess / den if den else excess


def run_case(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """Run one case through add_lora and shrink+expand; return errors and timing."""
    g = torch.Generator().manual_seed(seed)
    max_rank = max(case.ranks)
    w = LoRAWeights(len(case.ranks), case.in_features, case.out_features, max_rank, dtype, device)
    adapters = {}
    for s, r in enumerate(case.ranks):
        if r == 0:
            continue
        a = [
            (torch.randn(r, case.in_features, generator=g) / case.in_features**0.5).to(dtype)
            for _ in case.out_features
        ]
        b = [(torch.randn(o, r, generator=g) / r**0.5).to(dtype) for o in case.out_features]
        c = 0.5 + 0.125 * (s % 5)
        w.load(s, a, b, c)
        adapters[s] = (a, b, c)
    slots = torch.randint(-1, len(case.ranks), (case.tokens,), generator=g)
    batch = LoRABatch.from_token_adapters(slots.to(device))
    x = torch.randn(case.tokens, case.in_features, generator=g).to(dtype)
    base = torch.randn(case.tokens, sum(case.out_features), generator=g).to(dtype)
    ref = _truth(x, adapters, slots, case.out_features)
    xd, bd = x.to(device), base.to(device)
    t0 = time.perf_counter()
    out = add_lora(bd.clone(), xd, w, batch)
    out2 = lora_expand(lora_shrink(xd, w, batch), w, batch, bd.clone())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ms = (time.perf_counter() - t0) * 1e3
    e1, e2 = delta_error(out, base, ref), delta_error(out2, base, ref)
    no_adapter = [i for i, s in enumerate(slots.tolist()) if s not in adapters]
    untouched = torch.equal(out.cpu()[no_adapter], base[no_adapter])
    ok = e1 <= TOLERANCE[dtype] and e2 <= TOLERANCE[dtype] and untouched
    return {
        "case": case.name,
        "dtype": str(dtype).replace("torch.", ""),
        "backend": selection(w).name,
        "T": case.tokens,
        "K": case.in_features,
        "N": sum(case.out_features),
        "add_lora_err": e1,
        "shrink_expand_err": e2,
        "untouched_ok": untouched,
        "tol": TOLERANCE[dtype],
        "ms": ms,
        "ok": ok,
    }


def run_checks(device: torch.device | str | None = None, quick: bool = False) -> list[dict]:
    """Every case × dtype on ``device`` (default: the GPU if any, else the CPU)."""
    dev = (
        torch.device(device)
        if device is not None
        else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    )
    cases = GPU_CASES if dev.type == "cuda" else CPU_CASES
    if quick:
        cases = cases[:2]
    rows = []
    for case in cases:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            rows.append(run_case(case, dev, dtype))
    return rows
