"""Evaluation: accuracy of encoders on task splits, the static sweep with validation selection, and its result files."""
