"""Scaling training out, applied from outside the model: process groups, FSDP2, 8-bit precision, sharded checkpoints."""
