"""CPU tests of the probe helpers in ``lora_dispatch.bench.kernels`` (dense shrink probes)."""

from __future__ import annotations

import json
import math

import torch

from lora_dispatch.bench.kernels import DenseShrinkLog, partials_time

CPU = torch.device("cpu")


def _case(split: int = 2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 32, generator=g)
    a = torch.randn(6, 32, generator=g)
    return x, a, x @ a.T, torch.empty(split, 8, 6)


def test_partials_time_accepts_partials_that_sum_to_the_reference():
    x, a, ref, y = _case()

    def launch():
        y[0] = x[:, :16] @ a[:, :16].T
        y[1] = x[:, 16:] @ a[:, 16:].T

    assert math.isnan(partials_time(launch, y, ref, CPU, "ok"))


def test_partials_time_rejects_wrong_or_unwritten_partials(capsys):
    x, a, ref, y = _case()

    def half():  # the second split never written: the NaN poison must show
        y[0] = x[:, :16] @ a[:, :16].T

    def off():
        y[0] = x @ a.T
        y[1] = 0.1 * ref

    assert partials_time(half, y, ref, CPU, "half") is None
    assert partials_time(off, y, ref, CPU, "off") is None
    out = capsys.readouterr().out
    assert "half: wrong result" in out and "off: wrong result" in out


def test_partials_time_reports_a_failing_build(capsys):
    _, _, ref, y = _case()

    def broken():
        raise RuntimeError("no such config")

    assert partials_time(broken, y, ref, CPU, "cfg7") is None
    assert "cfg7 failed" in capsys.readouterr().out


def test_dense_shrink_log_counts_minimal_bytes_and_writes_every_row(tmp_path):
    path = tmp_path / "probe.json"
    log = DenseShrinkLog(str(path), CPU, copy_gbs=1000.0)
    t, n, k = 8192, 192, 4096
    row = log.add("tma", [64, 64], 50.0, t, n, k, split=2, regs=58)
    nbytes = t * k * 2 + n * k * 2 + t * n * 4 * 2
    assert row["pct_copy"] == round(100 * nbytes / 50.0 / 1e3 / 1000.0, 1)
    assert row["regs"] == 58
    log.add("cublas", "x@A^T", 25.0, t, n, k)
    data = json.loads(path.read_text())
    assert [r["kind"] for r in data["rows"]] == ["tma", "cublas"]
    assert data["copy_gbs"] == 1000.0


def _script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_size_copy_table_reads_both_rulers(tmp_path):
    """``readme_tables.size_copy_table``: the same-size copy's speed over the 1 GiB copy
    bandwidth, then the op's GPU time over the copy's; rows it has no copy for print '-'."""
    mod = _script("readme_tables")
    row = dict(op="expand", backend="triton", adapters=4, T=2048, rank=16, bytes=4_000_000,
               gpu_us=2.0, size_copy_us=1.6, pct_size_copy=80.0)
    f = tmp_path / "k.json"
    f.write_text(json.dumps({"copy_gbs": 5000.0, "rows": [row, dict(row, adapters=1)]}))
    lines = mod.size_copy_table(str(f)).splitlines()
    expand = next(line for line in lines if line.startswith("| expand |"))
    # 4 MB in 1.6 us = 2500 GB/s = 50% of 5000; the op takes 2.0 us: 80% of the copy's speed
    assert expand == "| expand | - | - | 50% · 80% | - |"
    assert next(line for line in lines if line.startswith("| shrink |")).count("-") == 4


def test_decode_probe_reads_expand_tilings():
    """``probe_add_lora_decode``'s ``BMxBNxNCOL[xSTAGES][p]`` specs: stages default to the
    shipped config's, ``p`` turns the prefetch on, ``default`` is the shipped config."""
    from lora_dispatch.devices.configs import ExpandConfig

    mod = _script("probe_add_lora_decode")
    base = ExpandConfig(16, 64, 16, 4, 1, 1, True)
    assert mod._expand_cfg("default", base) is base
    assert mod._expand_cfg("16x64x2p", base) == ExpandConfig(16, 64, 16, 4, 1, 2, True)
    assert mod._expand_cfg("32x256x1x2", base) == ExpandConfig(32, 256, 16, 4, 2, 1, False)
