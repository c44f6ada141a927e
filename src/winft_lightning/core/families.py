"""The method families, one table for the whole project (no heavy imports, so the study, the
figures and the tests read it as cheaply as :mod:`winft_lightning.lit.modules` does)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["BY_MODULE", "BY_NAME", "FAMILIES", "Family"]


class Family(NamedTuple):
    """name: the config spelling (``experiment=fmnist_<name>``, ``modules.MODULES`` key, the
    study's ``family`` column); module: its LightningModule class in
    :mod:`winft_lightning.lit.modules`; label: as the paper's tables print it."""

    name: str
    module: str
    label: str


FAMILIES = (
    Family("vit", "ViTModule", "ViT"),
    Family("awd_vit", "AWDViTModule", "AWD-ViT"),
    Family("awd_dip_vit", "AWDDIPViTModule", "AWD+DIP ViT"),
    Family("winft", "WinfTModule", "WinfT"),
)
BY_NAME = {f.name: f for f in FAMILIES}
BY_MODULE = {f.module: f for f in FAMILIES}
