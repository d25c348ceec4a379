"""Multi-teacher knowledge distillation: teachers, the teacher cache, and the KD-batch loss (SPEC §5)."""
