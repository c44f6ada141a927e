"""winft_lightning: patch interactions in Vision Transformers on Lightning + Hydra."""

__version__ = "0.1.0"
