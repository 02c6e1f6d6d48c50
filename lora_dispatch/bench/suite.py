"""``lora-dispatch bench``: the launch, kernel and layer benchmarks that fit this device.

On a GPU: the launch benchmark (``benchmarks/bench_launch.py`` of a repository checkout),
the kernel sweep (:mod:`lora_dispatch.bench.kernels`) and the layer sweep
(:mod:`lora_dispatch.bench.layer`). Without a GPU: a quick CPU set, reference-backend kernel
timings and the layer benchmark at small sizes (the launch benchmark needs a GPU).

Progress goes to stderr, a summary table to stdout, everything to one JSON file
(``--json``; by default ``benchmarks/results/suite-<device>-<date>.json`` in a checkout) and a
PNG (``--plot``, needs matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import runpy
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from .timing import env_record, format_table, host_time_us, result_path, write_json

__all__ = ["main", "run", "SECTIONS", "Progress"]

SECTIONS = ("launch", "kernels", "layer")
REPO = Path(__file__).resolve().parents[2]
LAUNCH_SCRIPT = REPO / "benchmarks" / "bench_launch.py"
KERNEL_COLUMNS = ("op", "backend", "dtype", "T", "rank", "adapters", "gpu_us", "graph_us",
                  "host_us", "gbs", "pct_copy", "path")

# CPU kernel set: one fused qkv-shaped layer of the tiny (Llama-3-8B / 16) shape.
CPU_KERNEL_SHAPE = (256, (256, 64, 64))
CPU_KERNEL_T = (1, 16, 64)


class Progress:
    """A one-line text progress bar on ``stream`` (a line per update when not a terminal)."""

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.prefix = ""
        self._last = ""

    def section(self, index: int, total: int, name: str) -> None:
        self.prefix = f"[{index}/{total} {name}]"
        self._write(f"{self.prefix} starting", final=False)

    def update(self, done: int, total: int, label: str) -> None:
        total = max(total, 1)
        fill = int(self.width * min(done, total) / total)
        bar = "#" * fill + "-" * (self.width - fill)
        self._write(f"{self.prefix} [{bar}] {done}/{total} {label}", final=False)

    def done(self, status: str, seconds: float, note: str = "") -> None:
        extra = f" ({note})" if note else ""
        self._write(f"{self.prefix} {status} in {seconds:.1f}s{extra}", final=True)

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            pad = max(0, len(self._last) - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._last = "" if final else text
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------- state hygiene
@contextlib.contextmanager
def _isolated() -> Any:
    """Restore environment variables, the backend selection and the launcher mode after a
    section (benchmarks may force ``LORA_DISPATCH_BACKEND`` or a launcher mode)."""
    env = dict(os.environ)
    try:
        from lora_dispatch.launchers import launcher_mode, set_launcher_mode

        mode = launcher_mode()
    except ImportError:
        set_launcher_mode, mode = None, None
    argv = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = argv
        if dict(os.environ) != env:
            os.environ.clear()
            os.environ.update(env)
        try:
            from lora_dispatch import devices

            devices.reset()
        except (ImportError, AttributeError):
            pass
        if set_launcher_mode is not None:
            with contextlib.suppress(Exception):
                set_launcher_mode(mode)


def _read_rows(path: Path) -> tuple[dict, list[dict]] | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return {}, data
    if isinstance(data, dict):
        rows = data.pop("rows", [])
        return data, rows if isinstance(rows, list) else []
    return None


def _timing_rows(data: Any, path: tuple[str, ...] = ()) -> list[dict]:
    """Flatten nested ``{...: {"median_us": ...}}`` results (bench_launch.py's JSON) to rows
    ``{"case": "kernels/4_args", "mode": "fast", "median_us": ...}``."""
    if not isinstance(data, dict):
        return []
    if "median_us" in data and path:
        leaf = {k: v for k, v in data.items() if isinstance(v, (int, float, str))}
        return [{"case": "/".join(path[:-1]), "mode": path[-1], **leaf}]
    rows = []
    for k, v in data.items():
        rows += _timing_rows(v, (*path, str(k)))
    return rows


# --------------------------------------------------------------------------- sections
def _launch(device: torch.device, quick: bool, progress: Progress, verbose: bool) -> dict:
    if device.type != "cuda":
        return {"status": "skipped", "note": "the launch benchmark needs a GPU"}
    if not LAUNCH_SCRIPT.is_file():
        return {"status": "skipped",
                "note": "benchmarks/bench_launch.py not found (not a repository checkout)"}
    text = LAUNCH_SCRIPT.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "launch.json"
        argv = [str(LAUNCH_SCRIPT)]
        if quick and "--quick" in text:
            argv.append("--quick")
        if "--json" in text:
            argv += ["--json", str(out)]
        progress.update(0, 1, "bench_launch.py " + " ".join(argv[1:]))
        log = io.StringIO()
        code: object = 0
        with _isolated():
            sys.argv[:] = argv
            try:
                with contextlib.redirect_stdout(log if not verbose else sys.stdout):
                    runpy.run_path(str(LAUNCH_SCRIPT), run_name="__main__")
            except SystemExit as exc:
                code = exc.code
        res: dict[str, Any] = {"output": log.getvalue()[-4000:]}
        got = _read_rows(out)
        if got is not None:
            res["meta"], res["rows"] = got
            if not res["rows"]:  # bench_launch.py writes nested results, not rows
                res["rows"] = _timing_rows(res["meta"])
                res["columns"] = ("case", "mode", "median_us", "min_us")
                res["meta"] = {k: v for k, v in res["meta"].items() if k == "errors" or not (
                    isinstance(v, list) or isinstance(v, dict) and any(
                        isinstance(x, (dict, list)) for x in v.values()))}
        if code not in (0, None):
            res.update(status="failed", note=f"bench_launch.py exited with {code}")
        else:
            res["status"] = "ok"
            if got is None:
                res["note"] = "no JSON rows (see output)"
        return res


def _op_call(op: str, x: torch.Tensor, w: Any, batch: Any, out: torch.Tensor
             ) -> Callable[[], Any]:
    import lora_dispatch as ld

    if op == "shrink":
        return lambda: ld.lora_shrink(x, w, batch)
    if op == "expand":
        y = ld.lora_shrink(x, w, batch)
        return lambda: ld.lora_expand(y, w, batch, out)
    return lambda: ld.add_lora(out, x, w, batch)


def _cpu_kernels(device: torch.device, progress: Progress) -> dict:
    """Reference-backend shrink / expand / add_lora timings at small sizes (public API)."""
    import lora_dispatch as ld

    k, outs = CPU_KERNEL_SHAPE
    rank, n_adapters = 16, 4
    dtype = torch.float32
    gen = torch.Generator().manual_seed(0)
    w = ld.LoRAWeights(n_adapters, k, outs, rank, dtype=dtype, device=device)
    for s in range(n_adapters):
        w.load(s, [torch.randn(rank, k, generator=gen) / k**0.5 for _ in outs],
               [torch.randn(o, rank, generator=gen) * 0.01 for o in outs], 2.0)
    backend = ld.ops.selection(w).name
    rows = []
    cases = [(op, t) for t in CPU_KERNEL_T for op in ("shrink", "expand", "add_lora")]
    for i, (op, t) in enumerate(cases):
        progress.update(i, len(cases), f"{op} T={t}")
        x = torch.randn(t, k, generator=gen).to(device)
        batch = ld.LoRABatch.from_token_adapters([j % n_adapters for j in range(t)])
        out = torch.zeros(t, sum(outs), dtype=dtype, device=device)
        us = host_time_us(_op_call(op, x, w, batch, out), device, n=5, rounds=3, sync_each=True)
        rows.append({"op": op, "backend": backend, "dtype": "float32", "hidden": k,
                     "out_features": list(outs), "T": t, "rank": rank, "adapters": n_adapters,
                     "gpu_us": us, "host_us": us})
    progress.update(len(cases), len(cases), "done")
    return {"status": "ok", "rows": rows, "columns": KERNEL_COLUMNS,
            "note": "CPU: reference backend, wall time"}


def _kernels(device: torch.device, quick: bool, progress: Progress, verbose: bool) -> dict:
    if device.type != "cuda":
        return _cpu_kernels(device, progress)
    try:
        from . import kernels as kb
    except ImportError as exc:
        res = _cpu_kernels(device, progress)
        res["note"] = f"lora_dispatch.bench.kernels unavailable ({exc}); public-API timings"
        return res
    log = io.StringIO()
    with _isolated():
        if hasattr(kb, "run"):
            total = None
            with contextlib.suppress(Exception):
                total = len(kb.problems(quick, device))
            count = [0]

            def on_row(line: str) -> None:
                count[0] += 1
                progress.update(count[0], total or count[0], line.split()[0] if line else "")
                if verbose:
                    print(line)
                log.write(line + "\n")

            meta, rows = kb.run(quick=quick, device=device, log=on_row)
            return {"status": "ok", "meta": meta, "rows": rows,
                    "columns": getattr(kb, "COLUMNS", KERNEL_COLUMNS)}
        with tempfile.TemporaryDirectory() as tmp:  # only main(argv) available
            out = Path(tmp) / "kernels.json"
            argv = (["--quick"] if quick else []) + ["--json", str(out)]
            progress.update(0, 1, "kernels.main " + " ".join(argv))
            with contextlib.redirect_stdout(log if not verbose else sys.stdout):
                code = kb.main(argv)
            got = _read_rows(out)
    res: dict[str, Any] = {"status": "ok" if code in (0, None) else "failed",
                           "columns": getattr(kb, "COLUMNS", KERNEL_COLUMNS)}
    if got is not None:
        res["meta"], res["rows"] = got
    else:
        res["output"] = log.getvalue()[-4000:]
    return res


def _layer(device: torch.device, quick: bool, progress: Progress, verbose: bool) -> dict:
    from . import layer

    with _isolated():
        meta, rows = layer.run(quick=quick, device=device, progress=progress.update,
                               log=print if verbose else None)
    res = {"status": "ok", "meta": meta, "rows": rows, "columns": layer.COLUMNS}
    if any(r.get("errors") for r in rows):
        res["note"] = "some rows have errors (see JSON)"
    return res


RUNNERS: dict[str, Callable[[torch.device, bool, Progress, bool], dict]] = {
    "launch": _launch, "kernels": _kernels, "layer": _layer,
}


def run(only: Sequence[str] = SECTIONS, quick: bool = False,
        device: torch.device | str | None = None, progress: Progress | None = None,
        verbose: bool = False) -> tuple[dict, dict[str, dict]]:
    """Run the selected sections; returns ``(meta, {section: result})``.

    Each result has ``status`` (``ok`` / ``skipped`` / ``failed``), ``seconds``, and where
    available ``rows``, ``columns``, ``meta``, ``note``.
    """
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    cpu_only = dev.type != "cuda"
    quick = quick or cpu_only
    progress = progress or Progress()
    meta = env_record(dev)
    meta.update(bench="suite", quick=quick, sections=list(only))
    results: dict[str, dict] = {}
    # kernels last: its profiler (CUPTI) slows every later launch's host side in this process
    for i, name in enumerate(sorted(only, key=lambda n: n == "kernels"), 1):
        progress.section(i, len(only), name)
        t0 = time.perf_counter()
        try:
            res = RUNNERS[name](dev, quick, progress, verbose)
        except Exception as exc:  # one failing benchmark must not lose the others
            res = {"status": "failed", "note": f"{type(exc).__name__}: {exc}"[:500]}
        res["seconds"] = time.perf_counter() - t0
        results[name] = res
        progress.done(res["status"], res["seconds"], res.get("note", ""))
        if res["status"] == "failed" and res.get("output"):
            tail = res["output"].strip().splitlines()[-20:]
            print("\n".join("    " + ln for ln in tail), file=sys.stderr)
    return meta, results


# --------------------------------------------------------------------------- output
def summary(results: dict[str, dict]) -> str:
    lines = [format_table(
        [{"benchmark": n, "status": r["status"], "rows": len(r.get("rows") or []),
          "seconds": round(r.get("seconds", 0.0), 1), "note": r.get("note", "")}
         for n, r in results.items()],
        ("benchmark", "status", "rows", "seconds", "note"))]
    for name, r in results.items():
        rows = r.get("rows") or []
        if not rows:
            continue
        cols = list(r.get("columns") or [])
        if not cols:
            cols = [k for k in rows[0] if not isinstance(rows[0][k], (list, dict))][:12]
        present = [c for c in cols if any(row.get(c) is not None for row in rows)]
        lines += ["", f"== {name} ==", format_table(rows, present)]
    return "\n".join(lines)


def plot(results: dict[str, dict], path: str | Path, title: str = "") -> Path | None:
    """Kernel times (left) and the layer's slowdown and host time; ``None`` without data or
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from .layer import plot_axes, save_figure

    krows = [r for r in (results.get("kernels", {}).get("rows") or [])
             if r.get("gpu_us") is not None]
    lrows = results.get("layer", {}).get("rows") or []
    panels = (1 if krows else 0) + (2 if any(r.get("gpu_lora_us") for r in lrows) else 0)
    if not panels:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    axes = list(axes[0])
    if krows:
        ax = axes.pop(0)
        groups: dict[tuple, list[dict]] = {}
        for r in krows:
            key = (r.get("op"), r.get("backend"), r.get("rank"), r.get("adapters"))
            groups.setdefault(key, []).append(r)
        for (op, backend, rank, n), sel in sorted(groups.items(), key=str):
            sel = sorted(sel, key=lambda r: r["T"])
            if len(sel) < 2 and len(groups) > 12:
                continue
            ax.plot([r["T"] for r in sel], [r["gpu_us"] for r in sel], "o-", ms=3,
                    label=f"{op} {backend} r={rank} a={n}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens (T)")
        ax.set_ylabel("time per call (us)")
        ax.set_title("kernels")
        ax.legend(fontsize=6, ncol=2)
    if axes:
        plot_axes(lrows, axes[0], axes[1])
    return save_figure(fig, path, title, dpi=110)


def _sections(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"--only takes a comma-separated subset of {','.join(SECTIONS)}, got {value!r}")
    return [n for n in SECTIONS if n in names]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lora-dispatch bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sets (implied without a GPU)")
    ap.add_argument("--only", type=_sections, default=list(SECTIONS),
                    help="comma-separated subset of launch,kernels,layer")
    ap.add_argument("--json", default=None, help="JSON output path")
    ap.add_argument("--no-json", action="store_true", help="write no JSON")
    ap.add_argument("--plot", default=None, help="PNG plot path (needs matplotlib)")
    ap.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: GPU if any)")
    ap.add_argument("--verbose", action="store_true", help="show the benchmarks' own output")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 gives steadier CPU numbers on a busy machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    meta, results = run(args.only, quick=args.quick, device=args.device, verbose=args.verbose)
    print(summary(results))
    rows = [{"bench": name, **row} for name, r in results.items() for row in r.get("rows") or []]
    meta["results"] = {n: {k: v for k, v in r.items() if k not in ("rows", "columns")}
                       for n, r in results.items()}
    path = args.json
    if path is None and not args.no_json and (REPO / "benchmarks").is_dir():
        path = result_path("suite", meta["device"], REPO / "benchmarks" / "results")
    if path is not None and not args.no_json:
        print(f"wrote {write_json(path, meta, rows)}")
    if args.plot:
        title = f"{meta['device']}  torch {meta['torch']}  triton {meta['triton']}  " \
                f"commit {meta['commit']}"
        p = plot(results, args.plot, title)
        print(f"wrote {p}" if p else "plot skipped (matplotlib missing or nothing to plot)")
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
