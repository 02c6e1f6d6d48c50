"""Smoke tests of ``lora-dispatch bench`` (suite) and the layer benchmark on the CPU."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lora_dispatch.bench import layer, suite


@pytest.fixture
def small(monkeypatch):
    """Shrink the CPU sets to a couple of rows so the smoke test stays fast."""
    real = layer.configs
    monkeypatch.setattr(layer, "configs", lambda *a, **k: real(*a, **k)[:2])
    monkeypatch.setattr(suite, "CPU_KERNEL_T", (1, 4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke test")
def test_suite_quick_cpu(tmp_path, small, capsys):
    out = tmp_path / "suite.json"
    png = tmp_path / "suite.png"
    env = dict(os.environ)
    rc = suite.main(["--quick", "--json", str(out), "--plot", str(png)])
    assert rc == 0
    assert dict(os.environ) == env
    data = json.loads(out.read_text())
    assert data["bench"] == "suite" and data["quick"] is True
    assert data["results"]["launch"]["status"] == "skipped"
    assert data["results"]["kernels"]["status"] == "ok"
    assert data["results"]["layer"]["status"] == "ok"
    benches = {r["bench"] for r in data["rows"]}
    assert benches == {"kernels", "layer"}
    lrows = [r for r in data["rows"] if r["bench"] == "layer"]
    assert len(lrows) == 2
    for r in lrows:
        assert r["gpu_base_us"] > 0 and r["gpu_lora_us"] > 0 and r["host_lora_us"] > 0
        assert r["backend"] == "reference" and "errors" not in r
        assert r["slowdown_pct"] == pytest.approx(100 * (r["gpu_lora_us"] / r["gpu_base_us"] - 1))
    krows = [r for r in data["rows"] if r["bench"] == "kernels"]
    assert {r["op"] for r in krows} == {"shrink", "expand", "add_lora"}
    for key in ("device", "torch", "triton", "commit", "date"):
        assert key in data
    captured = capsys.readouterr()
    assert "benchmark" in captured.out and "== layer ==" in captured.out
    assert "[2/3 layer]" in captured.err  # kernels runs last (its profiler slows launches)
    assert "[3/3 kernels]" in captured.err
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert png.stat().st_size > 0


def test_suite_only_and_bad_args(tmp_path, small):
    out = tmp_path / "s.json"
    assert suite.main(["--only", "launch", "--json", str(out), "--device", "cpu"]) == 0
    data = json.loads(out.read_text())
    assert list(data["results"]) == ["launch"] and data["rows"] == []
    with pytest.raises(SystemExit):
        suite.main(["--only", "kernels,bogus"])


def test_failing_section_is_reported(tmp_path, small, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("broken benchmark")

    monkeypatch.setitem(suite.RUNNERS, "kernels", boom)
    out = tmp_path / "s.json"
    rc = suite.main(["--only", "kernels,layer", "--json", str(out), "--device", "cpu"])
    assert rc == 1
    data = json.loads(out.read_text())
    assert data["results"]["kernels"]["status"] == "failed"
    assert "broken benchmark" in data["results"]["kernels"]["note"]
    assert data["results"]["layer"]["status"] == "ok"


def test_layer_main_cpu(tmp_path, small):
    out = tmp_path / "layer.json"
    assert layer.main(["--quick", "--device", "cpu", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["bench"] == "layer" and data["shape"]["name"] == "tiny"
    assert len(data["rows"]) == 2 and all(r["T"] in (1, 16) for r in data["rows"])


def test_layer_token_routing():
    assert layer.token_slots(5, 4) == [0, 1, 2, 3, 0]
    slots = layer.token_slots(2048, 16)
    assert slots == sorted(slots) and set(slots) == set(range(16))
    assert layer.LLAMA3_8B.projections()["qkv"] == (4096, (4096, 1024, 1024))
    assert layer.LLAMA3_8B.projections()["down"] == (14336, (4096,))
    full = layer.configs(False, True)
    assert len(full) == 2 * 2 * 6 and {c[2] for c in full} == {1, 16, 64, 256, 2048, 8192}


def test_launch_section_runs_script(tmp_path, monkeypatch):
    """The launch section runs bench_launch.py via runpy and flattens its nested JSON."""
    script = tmp_path / "bench_launch.py"
    script.write_text(
        "import argparse, json, os, sys\n"
        "def main():\n"
        "    ap = argparse.ArgumentParser()\n"
        "    ap.add_argument('--quick', action='store_true')\n"
        "    ap.add_argument('--json')\n"
        "    ns = ap.parse_args()\n"
        "    os.environ['LORA_DISPATCH_BACKEND'] = 'triton'  # must not leak\n"
        "    print('table')\n"
        "    json.dump({'device': 'fake', 'quick': ns.quick, 'breakdown': {'bind': 1.5},\n"
        "               'kernels': {'4_args': {'fast': {'median_us': 4.0, 'min_us': 3.9},\n"
        "                                      'triton': {'median_us': 8.0}}},\n"
        "               'layer': {'fast': {'median_us': 40.0}}}, open(ns.json, 'w'))\n"
        "    return 0\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main())\n"
    )
    monkeypatch.setattr(suite, "LAUNCH_SCRIPT", script)
    env = dict(os.environ)
    res = suite._launch(torch.device("cuda"), True, suite.Progress(), False)
    assert dict(os.environ) == env
    assert res["status"] == "ok" and res["meta"]["quick"] is True
    assert res["meta"]["breakdown"] == {"bind": 1.5}
    assert {(r["case"], r["mode"], r["median_us"]) for r in res["rows"]} == {
        ("kernels/4_args", "fast", 4.0), ("kernels/4_args", "triton", 8.0), ("layer", "fast", 40.0)}
    assert "table" in res["output"]
    monkeypatch.setattr(suite, "LAUNCH_SCRIPT", tmp_path / "missing.py")
    res = suite._launch(torch.device("cuda"), True, suite.Progress(), False)
    assert res["status"] == "skipped" and "not found" in res["note"]


def test_kernel_sweep_times_hosts_before_the_profiler(monkeypatch):
    """On CUDA, ``kernels.run`` takes every host column and the host breakdown before any
    GPU timing (the copy bandwidth by the profiler included), and hands each row its own."""
    from lora_dispatch.bench import kernels as kb

    calls = []
    dev = torch.device("cuda", 0)
    probs = [(kb.Problem("add_lora", 64, t, 8, 2, torch.float16, dev), "triton") for t in (1, 16)]
    monkeypatch.setattr(kb, "problems", lambda *args: probs)
    monkeypatch.setattr(kb, "env_record", lambda d: {})
    monkeypatch.setattr(kb, "host_breakdown", lambda d, log: calls.append("breakdown") or [{}])
    monkeypatch.setattr(kb, "host_us", lambda p, b: calls.append(("host", p.t)) or 10.0 + p.t)

    def copy_bw(d, method="clean"):
        calls.append(("copy", method))
        return 1.0

    def measure(p, backend, bw, sets, bwk, host):
        calls.append(("measure", p.t, host))
        return {"op": p.op, "T": p.t, "host_us": host}

    monkeypatch.setattr(kb, "copy_bandwidth_gbs", copy_bw)
    monkeypatch.setattr(kb, "measure", measure)
    meta, rows = kb.run(device=dev, log=lambda line: None)
    assert calls == ["breakdown", ("host", 1), ("host", 16), ("copy", "clean"),
                     ("copy", "kernel"), ("measure", 1, 11.0), ("measure", 16, 26.0)]
    assert [r.get("host_us") for r in rows] == [11.0, 26.0, None]
    assert "host_before_profiler" in meta


def test_problem_slices_drive_bytes_and_inputs():
    """A Problem's ``outs`` (the probes' gate_up / one-slice add_lora) sets the weights
    ``_build`` makes and the bytes ``min_bytes`` counts; without it the op's LAYERS entry."""
    from lora_dispatch.bench import kernels as kb

    cpu = torch.device("cpu")
    qkv = kb.Problem("add_lora", 64, 300, 8, 2, torch.float16, cpu)
    gu = kb.Problem("add_lora", 64, 300, 8, 2, torch.float16, cpu, outs=(96, 96))
    batch, ((w, x, y, out),) = kb._build(gu, 1)
    assert tuple(w.out_features) == (96, 96) and out.shape == (300, 192)
    assert x.shape == (300, 64) and y.shape == (2, 300, 8)
    assert kb._outs(qkv) == (64, 16, 16)
    # x, both adapters' A (2 slices) and B, out read and written; fp16
    assert kb.min_bytes(gu) == 2 * (300 * 64 + 2 * 8 * (2 * 64 + 192) + 2 * 300 * 192)
