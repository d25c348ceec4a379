"""Controlled experiments: `loki ablate` trains variants x seeds of one config and compares them with paired
statistics on the same held-out windows."""
