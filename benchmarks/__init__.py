"""Benchmarks against reference implementations; run them with ``python -m benchmarks.run``."""
