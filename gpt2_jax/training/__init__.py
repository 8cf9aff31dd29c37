"""Training: the loop, the jitted step, the optimizer, the update guard, checkpoints, metrics and the workdir."""
