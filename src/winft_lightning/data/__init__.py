"""Data layer: sources -> shards -> ShardDataModule, mask geometry (see docs/INTERFACES.md)."""

from winft_lightning.data.errors import DataError, ManifestError, MaskError, ShardError, SourceError
from winft_lightning.data.geometry import check_mask_geometry, hflip_dip_order, hflip_windows
from winft_lightning.data.masks import alpha_tag, awd_member, dip_member
from winft_lightning.data.shards import read_manifest

__all__ = [
    "DataError",
    "ManifestError",
    "MaskError",
    "ShardError",
    "SourceError",
    "alpha_tag",
    "awd_member",
    "check_mask_geometry",
    "dip_member",
    "hflip_dip_order",
    "hflip_windows",
    "read_manifest",
]
