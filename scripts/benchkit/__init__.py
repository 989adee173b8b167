"""The benchmark scripts' shared code (scripts/bench_*.py, scripts/check_cpu_precision.py)."""
