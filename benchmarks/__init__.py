"""runnerlib benchmarks: the `python -m benchmarks` suite and pytest-benchmark micro-benchmarks.

Kept import-light: pytest imports this package when it collects `benchmarks/test_bench_*.py`.
"""
