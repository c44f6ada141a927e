"""winft_lightning: patch interactions in Vision Transformers on Lightning + Hydra."""

from winft_lightning.resolvers import register as _register_resolvers

__version__ = "0.1.0"

_register_resolvers()
