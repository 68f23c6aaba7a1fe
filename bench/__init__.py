"""Benchmarks: speed, capacity and editing quality (see bench/RESULTS.md and docs/benchmarks.md)."""
