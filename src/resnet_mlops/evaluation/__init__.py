"""Evaluation: error rates, per-class accuracy, confusion matrices and their plots."""
