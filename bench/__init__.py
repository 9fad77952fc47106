"""Benchmarks: each prints its figures and, on its last line, the ratios its issue names."""
