"""mergeflow: reproducible merging of CLIP image encoders (CART and baselines)."""

__version__ = "0.1.0"
