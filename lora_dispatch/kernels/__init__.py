"""Kernel implementations, one module (or package) per backend.

Every backend exports ``shrink(x, w, batch) -> y``, ``expand(y, w, batch, base_out)`` and
``add_lora(base_out, x, w, batch)``; see :mod:`lora_dispatch.kernels.reference` for the
exact semantics and the attributes of ``w`` and ``batch`` they may use.
"""
