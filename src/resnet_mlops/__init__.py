"""Deep Residual Learning (He et al., 2015) as a tracked, versioned training pipeline."""

__version__ = "0.1.0"
