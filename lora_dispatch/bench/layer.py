"""Layer benchmark: the projections of one Llama-3-8B decoder layer, without and with LoRA.

One layer = fused qkv (4096 -> 4096+1024+1024), o (4096 -> 4096), fused gate_up
(4096 -> 14336+14336) and down (14336 -> 4096): four base GEMMs through torch (bf16 on GPU),
plus one :func:`lora_dispatch.add_lora` per projection (the fused ones with 3 / 2 slices).
Every adapter slot holds an adapter of the row's rank; decode steps (T = 1..256) route token
``i`` to slot ``i % adapters``, prefill steps (T = 2048, 8192) give each adapter one
contiguous segment.

Per row: GPU time of the layer without / with LoRA and the slowdown in % (eager, CUDA events
median; and per call replayed from a CUDA graph, with a static :meth:`LoRABatch.empty` batch),
host time to issue one layer (base + LoRA) and its LoRA calls alone, the latter with the fast
launcher and with plain Triton launches (``lora_dispatch.launchers.set_launcher_mode``).
Eager GPU time is taken around each call with CUDA events, so where the host is slower than
the GPU (small T) it includes the launch gaps an eager engine sees; the CUDA-graph columns are
device time alone. Host times are the median issue time of one call with an idle queue.

On the CPU (``--quick``, or no GPU) a scaled-down layer runs in float32 on the reference
backend; "GPU time" is then synchronous wall time.

Run ``python benchmarks/bench_layer.py`` (``--quick``, ``--json PATH``, ``--plot PATH``).
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .timing import (
    env_record,
    format_table,
    gpu_time_us,
    graph_time_us,
    host_time_us,
    profiler_used,
    result_path,
    write_json,
)

__all__ = ["LayerShape", "LLAMA3_8B", "TINY", "run", "plot", "plot_axes", "save_figure", "main",
           "COLUMNS"]

DECODE_T = (1, 16, 64, 256)
PREFILL_T = (2048, 8192)
COLUMNS = ("shape", "backend", "dtype", "rank", "adapters", "T", "gpu_base_us", "gpu_lora_us",
           "slowdown_pct", "graph_base_us", "graph_lora_us", "graph_slowdown_pct",
           "host_layer_us", "host_lora_us", "host_lora_fast_us", "host_lora_triton_us")


@dataclass(frozen=True)
class LayerShape:
    """Widths of a Llama-style decoder layer's projections."""

    name: str
    hidden: int
    q: int
    kv: int
    intermediate: int

    def projections(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """``{name: (in_features, out_features per slice)}``."""
        return {
            "qkv": (self.hidden, (self.q, self.kv, self.kv)),
            "o": (self.q, (self.hidden,)),
            "gate_up": (self.hidden, (self.intermediate, self.intermediate)),
            "down": (self.intermediate, (self.hidden,)),
        }


LLAMA3_8B = LayerShape("llama3-8b", 4096, 4096, 1024, 14336)
TINY = LayerShape("tiny", 256, 256, 64, 896)  # Llama-3-8B / 16, for the CPU


def _repo_results() -> Path:
    repo = Path(__file__).resolve().parents[2]
    if (repo / "benchmarks").is_dir():
        return repo / "benchmarks" / "results"
    return Path("benchmarks") / "results"


def token_slots(t: int, adapters: int) -> list[int]:
    """Decode: token ``i`` -> slot ``i % adapters``; prefill: one segment per adapter."""
    if t <= max(DECODE_T):
        return [i % adapters for i in range(t)]
    per = -(-t // adapters)
    return [min(i // per, adapters - 1) for i in range(t)]


class BaseLayer:
    """Inputs, base weights and outputs of one layer at ``T`` tokens."""

    def __init__(self, shape: LayerShape, t: int, dtype: torch.dtype, device: torch.device,
                 weights: dict[str, torch.Tensor] | None = None) -> None:
        self.shape, self.t, self.dtype, self.device = shape, t, dtype, device
        gen = torch.Generator(device=device).manual_seed(0)
        self.weights = weights if weights is not None else {
            name: torch.randn(sum(outs), k, generator=gen, device=device, dtype=dtype) * 0.02
            for name, (k, outs) in shape.projections().items()
        }
        self.x = {name: torch.randn(t, k, generator=gen, device=device, dtype=dtype)
                  for name, (k, _) in shape.projections().items()}
        self.out = {name: torch.empty(t, sum(outs), device=device, dtype=dtype)
                    for name, (_, outs) in shape.projections().items()}
        self._mm = [(self.x[n], self.weights[n].t(), self.out[n]) for n in self.weights]

    def base(self) -> None:
        for x, wt, out in self._mm:
            torch.mm(x, wt, out=out)


class LoRALayer:
    """The LoRA weights (``adapters`` slots of rank ``rank``) of one layer and its batches."""

    def __init__(self, base: BaseLayer, rank: int, adapters: int) -> None:
        import lora_dispatch as ld

        self.base_layer = base
        dev, dtype = base.device, base.dtype
        gen = torch.Generator(device=dev).manual_seed(1)
        self.w = {}
        for name, (k, outs) in base.shape.projections().items():
            w = ld.LoRAWeights(adapters, k, outs, rank, dtype=dtype, device=dev)
            for s in range(adapters):
                a = [torch.randn(rank, k, generator=gen, device=dev, dtype=dtype) / k**0.5
                     for _ in outs]
                b = [torch.randn(o, rank, generator=gen, device=dev, dtype=dtype) * 0.01
                     for o in outs]
                w.load(s, a, b, 2.0)
            self.w[name] = w
        slots = token_slots(base.t, adapters)
        self.batch = ld.LoRABatch.from_token_adapters(torch.tensor(slots, device=dev))
        self.static = ld.LoRABatch.empty(base.t, device=dev)
        self.static.update_(slots)
        self.backend = ld.ops.selection(self.w["qkv"]).name
        self._calls = [(base.out[n], base.x[n], self.w[n]) for n in self.w]
        self._add = ld.add_lora

    def lora(self, batch) -> None:
        add = self._add
        for out, x, w in self._calls:
            add(out, x, w, batch)

    def layer(self, batch) -> None:
        self.base_layer.base()
        self.lora(batch)


# ------------------------------------------------------------------ launcher override
def _launcher_api() -> tuple[Callable[[str | None], Any], Callable[[], str]] | None:
    try:
        from lora_dispatch.launchers import launcher_mode, set_launcher_mode
    except ImportError:
        return None
    return set_launcher_mode, launcher_mode


def _host_lora_by_launcher(lora: LoRALayer, device: torch.device, rounds: int
                           ) -> dict[str, float | None]:
    out: dict[str, float | None] = {"host_lora_fast_us": None, "host_lora_triton_us": None}
    api = _launcher_api()
    if api is None or lora.backend != "triton":
        return out
    set_mode, get_mode = api
    before = get_mode()
    try:
        for mode in ("triton", "fast"):
            set_mode(mode)
            fn = lambda: lora.lora(lora.batch)
            for _ in range(3):  # the fast path compiles its lookup on the first calls
                fn()
            out[f"host_lora_{mode}_us"] = host_time_us(fn, device, n=1, rounds=rounds)
    finally:
        set_mode(before)
    return out


# ------------------------------------------------------------------ sweep
def configs(quick: bool, on_gpu: bool, ranks: Sequence[int] | None = None,
            adapters: Sequence[int] | None = None, tokens: Sequence[int] | None = None
            ) -> list[tuple[int, int, int]]:
    """``(rank, adapters, T)`` rows, grouped by T (base layers are reused within a T)."""
    if quick:
        r, a, t = (16,), (4,), ((16, 2048) if on_gpu else (1, 16, 64))
    elif on_gpu:
        r, a, t = (16, 64), (4, 16), DECODE_T + PREFILL_T
    else:
        r, a, t = (16, 64), (4, 16), (1, 16, 64, 256)
    r, a, t = ranks or r, adapters or a, tokens or t
    return [(rank, n, tt) for tt in t for rank in r for n in a]


def _dev_time(fn: Callable[[], Any], device: torch.device) -> float:
    """GPU time (CUDA events) on a GPU; a few synchronous wall-time samples on the CPU."""
    if device.type == "cuda":
        return gpu_time_us(fn, device)
    return host_time_us(fn, device, n=2, rounds=3, sync_each=True)


def _safe(fn: Callable[[], Any], errors: list[str], what: str) -> Any:
    try:
        return fn()
    except Exception as exc:  # keep the sweep going; the row says what failed
        errors.append(f"{what}: {exc!r}"[:300])
        return None


def _pct(lora: float | None, base: float | None) -> float | None:
    if lora is None or base is None or base <= 0:
        return None
    return 100.0 * (lora / base - 1.0)


def _time_base(base: BaseLayer, graphs: bool, errors: list[str]) -> dict[str, float | None]:
    dev = base.device
    big = base.t > max(DECODE_T)
    out = {"gpu_base_us": _safe(lambda: _dev_time(base.base, dev), errors, "gpu base"),
           "graph_base_us": None}
    if graphs and dev.type == "cuda":
        out["graph_base_us"] = _safe(
            lambda: graph_time_us(base.base, dev, inner=5 if big else 20, reps=20),
            errors, "graph base")
    return out


def _time_lora(base: BaseLayer, rank: int, n_adapters: int, graphs: bool,
               errors: list[str]) -> dict[str, Any]:
    dev = base.device
    on_gpu = dev.type == "cuda"
    big = base.t > max(DECODE_T)
    lora = _safe(lambda: LoRALayer(base, rank, n_adapters), errors, "setup")
    if lora is None:
        return {}
    eager = lambda: lora.layer(lora.batch)
    lora_only = lambda: lora.lora(lora.batch)
    out: dict[str, Any] = {"backend": lora.backend}
    out["gpu_lora_us"] = _safe(lambda: _dev_time(eager, dev), errors, "gpu lora")
    if graphs and on_gpu:
        out["graph_lora_us"] = _safe(
            lambda: graph_time_us(lambda: lora.layer(lora.static), dev, inner=5 if big else 20,
                                  reps=20),
            errors, "graph lora")
    rounds = 50 if on_gpu else 3
    out["host_layer_us"] = _safe(lambda: host_time_us(eager, dev, n=1, rounds=rounds), errors,
                                 "host layer")
    out["host_lora_us"] = _safe(lambda: host_time_us(lora_only, dev, n=1, rounds=rounds),
                                errors, "host lora")
    out.update(_safe(lambda: _host_lora_by_launcher(lora, dev, rounds), errors, "launchers")
               or {})
    return out


def run(quick: bool = False, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None, shape: LayerShape | None = None,
        ranks: Sequence[int] | None = None, adapters: Sequence[int] | None = None,
        tokens: Sequence[int] | None = None, graphs: bool = True,
        progress: Callable[[int, int, str], None] | None = None,
        log: Callable[[str], None] | None = None) -> tuple[dict, list[dict]]:
    """Run the sweep; returns ``(meta, rows)``.

    ``progress(done, total, label)`` is called before each row (and once at the end).
    """
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    on_gpu = dev.type == "cuda"
    dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
    shape = shape or (LLAMA3_8B if on_gpu else TINY)
    grid = configs(quick, on_gpu, ranks, adapters, tokens)
    meta = env_record(dev)
    api = _launcher_api()
    meta.update(bench="layer", quick=quick, shape=shape.__dict__, dtype=str(dtype),
                timing="cuda events" if on_gpu else "synchronous wall time (CPU)",
                launcher=api[1]() if api else None, host_before_profiler=not profiler_used())
    rows: list[dict] = []
    weights = None
    base: BaseLayer | None = None
    base_t: dict[str, Any] = {}
    for i, (rank, n_adapters, t) in enumerate(grid):
        if progress:
            progress(i, len(grid), f"{shape.name} r={rank} adapters={n_adapters} T={t}")
        errors: list[str] = []
        if base is None or base.t != t:
            base = None
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
            base = BaseLayer(shape, t, dtype, dev, weights)
            weights = base.weights
            base_t = _time_base(base, graphs, errors)
        row: dict[str, Any] = {
            "shape": shape.name, "dtype": str(dtype).replace("torch.", ""), "rank": rank,
            "adapters": n_adapters, "T": t, "phase": "decode" if t <= max(DECODE_T) else "prefill",
            **base_t,
        }
        row.update(_time_lora(base, rank, n_adapters, graphs, errors))
        row["slowdown_pct"] = _pct(row.get("gpu_lora_us"), row.get("gpu_base_us"))
        row["graph_slowdown_pct"] = _pct(row.get("graph_lora_us"), row.get("graph_base_us"))
        if errors:
            row["errors"] = errors
        rows.append(row)
        if log:
            log(format_table([row], COLUMNS).splitlines()[-1])
    if progress:
        progress(len(grid), len(grid), "done")
    base = weights = None
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return meta, rows


# ------------------------------------------------------------------ plot
def plot_axes(rows: Sequence[dict], ax1: Any, ax2: Any) -> bool:
    """Draw the slowdown (``ax1``) and LoRA host-time (``ax2``) panels; False if no data."""
    rows = [r for r in rows if r.get("gpu_lora_us") is not None]
    if not rows:
        return False
    for rank, n in sorted({(r["rank"], r["adapters"]) for r in rows}):
        sel = sorted((r for r in rows if (r["rank"], r["adapters"]) == (rank, n)),
                     key=lambda r: r["T"])
        ts = [r["T"] for r in sel]
        line, = ax1.plot(ts, [r["slowdown_pct"] for r in sel], "o-",
                         label=f"r={rank}, {n} adapters (eager)")
        color = line.get_color()
        if any(r.get("graph_slowdown_pct") is not None for r in sel):
            ax1.plot(ts, [r.get("graph_slowdown_pct") for r in sel], "s--", color=color,
                     label=f"r={rank}, {n} adapters (graph)")
        if any(r.get("host_lora_fast_us") is not None for r in sel):
            ax2.plot(ts, [r.get("host_lora_fast_us") for r in sel], "o-", color=color,
                     label=f"r={rank}, {n}: fast launcher")
            ax2.plot(ts, [r.get("host_lora_triton_us") for r in sel], "x:", color=color,
                     label=f"r={rank}, {n}: Triton launch")
        else:
            ax2.plot(ts, [r.get("host_lora_us") for r in sel], "o-", color=color,
                     label=f"r={rank}, {n}")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("tokens per step (T)")
    ax1.set_ylabel("LoRA slowdown of the layer (%)")
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.legend(fontsize=7)
    ax1.set_title("layer time with LoRA vs without")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("tokens per step (T)")
    ax2.set_ylabel("host time (us)")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=7)
    ax2.set_title("host time of a layer's 4 add_lora calls")
    return True


def plot(rows: Sequence[dict], path: str | Path, title: str = "") -> Path | None:
    """Slowdown % and LoRA host time vs T; ``None`` if matplotlib is missing or no data."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if not plot_axes(rows, ax1, ax2):
        plt.close(fig)
        return None
    return save_figure(fig, path, title, dpi=120)


def save_figure(fig: Any, path: str | Path, title: str = "", dpi: int = 120) -> Path:
    """Title, lay out, write ``fig`` to ``path`` (directories created) and close it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi)
    plt.close(fig)
    return p


def title(meta: dict) -> str:
    """Plot title: device, dtype, timing method and commit."""
    return (f"{meta['device']}, {meta['dtype'].replace('torch.', '')}, {meta['shape']['name']} "
            f"layer, {meta['timing']}, commit {meta['commit']}")


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_layer", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny set (CPU friendly)")
    ap.add_argument("--json", default=None,
                    help="JSON output (default benchmarks/results/layer-<device>-<date>.json)")
    ap.add_argument("--no-json", action="store_true", help="do not write JSON")
    ap.add_argument("--plot", default=None, help="PNG plot output (needs matplotlib)")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: GPU if any)")
    ap.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"),
                    help="default bf16 on GPU, fp32 on CPU")
    ap.add_argument("--shape", default=None, choices=("llama3-8b", "tiny"),
                    help="default llama3-8b on GPU, tiny on CPU")
    ap.add_argument("--ranks", type=_ints, default=None, help="e.g. 16,64")
    ap.add_argument("--adapters", type=_ints, default=None, help="e.g. 4,16")
    ap.add_argument("--tokens", type=_ints, default=None, help="e.g. 1,16,64,256,2048,8192")
    ap.add_argument("--no-graph", action="store_true", help="skip CUDA-graph timings")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 gives steadier CPU numbers on a busy machine)")
    return ap.parse_args(argv)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SHAPES = {"llama3-8b": LLAMA3_8B, "tiny": TINY}


def main(argv: Sequence[str] | None = None,
         progress: Callable[[int, int, str], None] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(format_table([], COLUMNS), flush=True)
    meta, rows = run(
        quick=args.quick, device=args.device, dtype=DTYPES.get(args.dtype),
        shape=SHAPES.get(args.shape), ranks=args.ranks, adapters=args.adapters,
        tokens=args.tokens, graphs=not args.no_graph, progress=progress,
        log=lambda s: print(s, flush=True),
    )
    print()
    print(format_table(rows, COLUMNS))
    for r in rows:
        for e in r.get("errors", ()):
            print(f"  r={r['rank']} adapters={r['adapters']} T={r['T']}: {e}", file=sys.stderr)
    if not args.no_json:
        path = args.json or result_path("layer", meta["device"], _repo_results())
        print(f"wrote {write_json(path, meta, rows)}")
    if args.plot:
        p = plot(rows, args.plot, title(meta))
        print(f"wrote {p}" if p else "plot skipped (matplotlib missing or no rows)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
