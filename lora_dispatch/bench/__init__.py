"""Benchmark harness shared by ``benchmarks/*.py`` and ``lora-dispatch bench``."""
