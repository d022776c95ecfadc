"""Data: prepare and preprocess stages, and the input pipelines that feed training."""
