"""Device detection and the backend registry."""

from .info import PLATFORMS, DeviceInfo, current, describe
from .registry import (
    ENV_BACKEND,
    Backend,
    BackendUnavailableError,
    Selection,
    backends,
    get,
    register,
    reset,
    select,
)

__all__ = [
    "PLATFORMS",
    "DeviceInfo",
    "current",
    "describe",
    "ENV_BACKEND",
    "Backend",
    "BackendUnavailableError",
    "Selection",
    "backends",
    "get",
    "register",
    "reset",
    "select",
]
