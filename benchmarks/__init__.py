"""The benchmark: `python -m benchmarks --help` (see __main__.py)."""
