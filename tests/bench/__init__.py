"""Benchmarks: scripts that print numbers (not tests). Run ``python -m tests.bench``."""
