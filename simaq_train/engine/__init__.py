"""Fit loop, optimiser groups, EMA and checkpoints."""
