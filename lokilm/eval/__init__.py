"""Evaluation: held-out bits per byte (and, later, the benchmark suite)."""
