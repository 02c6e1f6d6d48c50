"""Triton backend: segmented shrink / expand / fused add_lora kernels (CUDA, ROCm, interpreter).

Exports the backend interface ``shrink``, ``expand``, ``add_lora`` (see
:mod:`lora_dispatch.kernels.reference` for the semantics) plus the other ``add_lora``
schedules for tests and benchmarks.
"""

from .launch import (
    add_lora,
    add_lora_fused,
    add_lora_overlap,
    add_lora_two_pass,
    expand,
    plan_for,
    shrink,
)

__all__ = ["shrink", "expand", "add_lora", "add_lora_fused", "add_lora_two_pass",
           "add_lora_overlap", "plan_for"]
