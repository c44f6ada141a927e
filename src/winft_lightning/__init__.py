"""winft_lightning: patch interactions in Vision Transformers on Lightning + Hydra."""

from winft_lightning.runtime.files import CODE_VERSION
from winft_lightning.runtime.resolvers import register as _register_resolvers

__version__ = CODE_VERSION

_register_resolvers()
