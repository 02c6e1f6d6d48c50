"""Describe the device a computation runs on: platform, name, arch, compute units, warp size."""

from __future__ import annotations

import functools
import os
import platform as _platform
from dataclasses import dataclass

import torch

PLATFORMS: tuple[str, ...] = ("cuda", "rocm", "xla", "cpu")

__all__ = ["DeviceInfo", "PLATFORMS", "current", "describe"]

# substrings of device names, most specific first ("gh200" contains "h200")
_FAMILIES = ("h200", "h100", "h800", "h20", "a100", "a800", "l40", "mi300", "mi250")
_FAMILY_ALIASES = {"h800": "h100", "a800": "a100"}


@dataclass(frozen=True)
class DeviceInfo:
    """What the registry knows about one device.

    Attributes
    ----------
    platform : str
        ``cuda``, ``rocm``, ``xla`` or ``cpu``.
    device : torch.device
    name : str
        Marketing name (``NVIDIA H100 80GB HBM3``, ``AMD Instinct MI300X``, ``TPU v5e``, CPU model).
    arch : str
        ``sm_90``, ``gfx942``, the XLA device kind, or the CPU machine (``x86_64``).
    compute_units : int
        SMs (CUDA), CUs (ROCm), cores (TPU chip / CPU).
    warp_size : int
        32 on NVIDIA, 64 on CDNA (ROCm), 1 where it does not apply.
    capability : tuple of int or None
        CUDA compute capability.
    memory_bytes : int or None
    """

    platform: str
    device: torch.device
    name: str
    arch: str
    compute_units: int
    warp_size: int
    capability: tuple[int, int] | None = None
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}, got {self.platform!r}")

    @property
    def family(self) -> str:
        """Short device family used to pick kernel configs (``h100``, ``a100``, ``mi300``, ...)."""
        name = self.name.lower()
        for key in _FAMILIES:
            if key in name:
                return _FAMILY_ALIASES.get(key, key)
        if self.platform == "rocm" and self.arch.startswith("gfx94"):
            return "mi300"
        return self.arch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine() or "cpu"


def _describe_gpu(dev: torch.device) -> DeviceInfo:
    props = torch.cuda.get_device_properties(dev)
    if torch.version.hip is not None:
        arch = getattr(props, "gcnArchName", "") or "gfx"
        return DeviceInfo(
            platform="rocm",
            device=dev,
            name=props.name,
            arch=arch.split(":")[0],
            compute_units=props.multi_processor_count,
            warp_size=getattr(props, "warp_size", 64),
            capability=None,
            memory_bytes=props.total_memory,
        )
    return DeviceInfo(
        platform="cuda",
        device=dev,
        name=props.name,
        arch=f"sm_{props.major}{props.minor}",
        compute_units=props.multi_processor_count,
        warp_size=getattr(props, "warp_size", 32),
        capability=(props.major, props.minor),
        memory_bytes=props.total_memory,
    )


def _describe_xla(dev: torch.device) -> DeviceInfo:
    """Describe an XLA device through ``torch_xla`` (a bare ``xla`` entry without it).

    ``name``: the PJRT device kind (``TPU v5 lite``) or ``XLA CPU (<cpu model>)``;
    ``arch``: the device kind (``TPU v5 lite``, ``cpu``); ``compute_units``: cores of the
    chip (TPU) or of the host (PJRT CPU client).
    """
    try:
        import torch_xla.core.xla_model as xm
    except ImportError:
        return DeviceInfo("xla", dev, name="xla", arch="xla", compute_units=1, warp_size=1)
    real = str(dev if dev.index is not None else torch.device("xla", 0))
    hw, kind, cores, memory = "xla", "xla", 1, None
    try:
        hw = str(xm.xla_device_hw(real))  # TPU, CPU, CUDA, NEURON
        kind = hw
        kind = str(xm.xla_device_kind(real)) or hw  # "TPU v5 lite", "cpu"
    except Exception:  # pragma: no cover - old torch_xla or runtime not started
        pass
    if hw.upper() == "CPU":
        name = f"XLA CPU ({_cpu_name()})"
        cores = os.cpu_count() or 1
    else:
        name = kind if hw.lower() in kind.lower() else f"{hw} {kind}".strip()
        try:
            import torch_xla.runtime as xr

            attrs = xr.runtime_device_attributes(real)
            cores = int(attrs.get("num_cores", 1)) or 1
        except Exception:  # pragma: no cover - depends on the runtime
            pass
    try:
        memory = int(xm.get_memory_info(real)["bytes_limit"])
    except Exception:  # CPU client: "GetAllocatorStats is not supported"
        pass
    return DeviceInfo("xla", dev, name=name, arch=kind, compute_units=cores, warp_size=1,
                      memory_bytes=memory)


@functools.cache
def describe(device: torch.device) -> DeviceInfo:
    """:class:`DeviceInfo` for ``device`` (cached)."""
    if device.type == "cuda":
        return _describe_gpu(device)
    if device.type == "xla":
        return _describe_xla(device)
    if device.type == "cpu":
        return DeviceInfo(
            "cpu", device, name=_cpu_name(), arch=_platform.machine() or "cpu",
            compute_units=os.cpu_count() or 1, warp_size=1,
        )
    raise ValueError(f"unsupported device type {device.type!r} (expected cuda, xla or cpu)")


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current(device: torch.device | str | int | None = None) -> DeviceInfo:
    """Describe ``device``, or the default accelerator (CUDA/ROCm, else CPU) when ``None``.

    XLA devices are described when passed explicitly (``torch_xla``'s device).
    """
    if device is None:
        dev = _default_device()
    else:
        dev = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return describe(dev)
