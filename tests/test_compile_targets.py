"""Every Triton kernel, with the configs its device family picks, compiles for an H100/H200
(sm_90, ptxas) and an MI300 (gfx942, Triton's AMDGPU backend) on a CPU-only machine: no
CUDA-only intrinsics reach the HIP build, and no variant spills registers."""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":  # pragma: no cover - interpreter processes
    pytest.skip("the interpreter does not compile", allow_module_level=True)
triton = pytest.importorskip("triton")
if tuple(int(v) for v in triton.__version__.split(".")[:2]) != (3, 6):
    pytest.skip(f"offline compile pinned to Triton 3.6 (ASTSource / target API), found "
                f"{triton.__version__}", allow_module_level=True)

from lora_dispatch.bench import compile as C  # noqa: E402


@pytest.mark.parametrize("target", ["sm90", "gfx942"])
def test_kernels_compile_without_spills(target, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    names = []
    for name, fn, types, meta, div in C.variants(target):
        stats, asm = C.compile_variant(target, fn, types, meta, div)
        names.append(name)
        assert asm, name
        if target == "sm90":
            assert stats["registers"] and stats["registers"] <= 255, (name, stats)
            assert not stats["spill_store_bytes"], (name, stats)
        else:
            assert stats["vgpr_count"], (name, stats)
            assert stats["vgpr_spill_count"] == 0, (name, stats)
            assert stats["private_segment_fixed_size"] == 0, (name, stats)
    assert any(n.startswith("shrink-") for n in names)
    assert any(n.startswith("expand-") for n in names)
    assert "zero_fill" in names


def _assert_packs(prefix: str, tmp_path, monkeypatch, boxes=((64, 64), (64, 64))) -> None:
    """The first sm_90 variant named ``prefix...`` was lowered with two CUtensorMaps: the
    native tier can pack it (T_DESC for the first two parameters, then a pointer) with the
    TMA metadata Triton recorded (128-byte swizzle, 2-byte bf16 elements, host data type
    9, ``boxes``: each descriptor's box, its rank the box's length)."""
    import struct

    from lora_dispatch.launchers import native

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    found = [v for v in C.variants("sm90") if v[0].startswith(prefix)]
    if not found:
        pytest.skip(f"no {prefix} variant in this Triton release")
    name, fn, types, meta, div = found[0]
    k = C.compiled_kernel("sm90", fn, types, meta, div)
    codes = native.variant_types(k, list(fn.arg_names))
    assert codes is not None and list(codes[:3]) == [native.T_DESC, native.T_DESC,
                                                      native.T_PTR]
    blob = native.variant_descs(k)
    assert len(blob) == 2 * 40
    for i, box in enumerate(boxes):
        swizzle, size, dtype, fp4, rank, *block = struct.unpack_from("10i", blob, 40 * i)
        assert (swizzle, size, dtype, fp4, rank, block[:rank]) == (3, 2, 9, 0, len(box),
                                                                   list(box))
    assert native.variant_geometry(k, 2) is not None


def test_gluon_variant_packs_for_the_native_tier(tmp_path, monkeypatch):
    """The Gluon shrink's ``x`` and ``A`` descriptors."""
    _assert_packs("shrink_gluon-ws-s3-r64", tmp_path, monkeypatch)


def test_gluon_expand_variant_packs_for_the_native_tier(tmp_path, monkeypatch):
    """The Gluon expand's ``out`` (a ``[T, N / 64, 64]`` view, ``[64, 1, 64]`` boxes) and
    ``B`` descriptors (TMA loads and the TMA store of ``out``)."""
    _assert_packs("expand_gluon-s3-r64", tmp_path, monkeypatch, ((64, 1, 64), (64, 64)))


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_tma_ring_probes_compile(kind, tmp_path, monkeypatch):
    """``benchmarks/probe_tma_read.py``'s ring and ``probe_tma_rmw.py``'s, which it shares
    boxes and layouts with, build for sm_90 on 2-D ``[64, 64]``, 3-D ``[64, 2, 64]`` and
    (read probe) ``perm`` ``[2, 64, 64]`` boxes, each box summed in registers (3-D) or fed
    to wgmma (2-D, ``perm``), so the probes run when a GPU session reaches them."""
    from pathlib import Path

    import torch
    from triton.runtime.jit import mangle_type

    pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import probe_tma_read
    import probe_tma_rmw

    x = torch.empty(256, 4096, dtype=torch.bfloat16)
    if kind == 2:
        desc, span = probe_tma_read.perm_descriptor(x, 64, 2)
    else:
        desc, span = probe_tma_rmw.box_descriptor(x, kind == 1, 64, 2 if kind else 64)
    assert span == (128 if kind else 64)
    types = {"desc": mangle_type(desc), "out_ptr": "*fp32"}
    read = C.compiled_kernel("sm90", probe_tma_read._ring_read, types,
                             dict(KSTEPS=4096 // span, STAGES=6, KIND=kind,
                                  CONSUME=1 if kind == 1 else 2, num_warps=4, num_stages=1), ())
    built = [(read, 6)]
    if kind < 2:
        built.append((C.compiled_kernel("sm90", probe_tma_rmw._ring_rmw,
                                        {"o_desc": mangle_type(desc)},
                                        dict(NCOL=8, STAGES=5, THREE=kind == 1, num_warps=4,
                                             num_stages=1), ()), 5))
    dims = "2d" if kind == 0 else "3d"
    for k, stages in built:
        assert "cp.async.bulk.tensor" in k.asm["ptx"]
        assert k.metadata.shared >= stages * 64 * 64 * 2
        assert f"cp.async.bulk.tensor.{dims}" in k.asm["ptx"]
    if kind != 1:
        assert "wgmma" in read.asm["ptx"]
