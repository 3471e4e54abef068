"""Benchmarks of userhub-sync: `make bench` (or `python -m bench`) runs them and writes bench/results.md.

Every figure is a ratio against a baseline measured in the same process, on the same server, interleaved with the
subject, so that the ratio holds on a noisy machine even when the absolute numbers do not. docs/PERFORMANCE.md
explains the method.
"""
