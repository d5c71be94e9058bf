"""Benchmarks: each ``bench_*.py`` measures the project against a reference tool in one run."""
