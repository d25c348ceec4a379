"""Training: the loop, its schedules, checkpoints, spike guard and metrics."""
