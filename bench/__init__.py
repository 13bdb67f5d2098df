"""Benchmarks (`make bench`): the router against direct-to-Triton baselines, in one run."""
