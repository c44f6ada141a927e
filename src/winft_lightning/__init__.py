"""winft_lightning: patch interactions in Vision Transformers on Lightning + Hydra.

``from winft_lightning import analyze`` (alias ``analyse``): the analysis of one's own timm ViT (:mod:`.api`),
imported on first use so that ``import winft_lightning`` stays free of torch."""

from typing import Any

from winft_lightning.runtime.files import CODE_VERSION
from winft_lightning.runtime.resolvers import register as _register_resolvers

__version__ = CODE_VERSION

_register_resolvers()

_API = ("Analysis", "analyze", "analyse")  # analyse: the documented alias of analyze


def __getattr__(name: str) -> Any:
    if name in _API:
        from winft_lightning import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
