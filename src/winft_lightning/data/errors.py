"""Errors of the data layer. Each message names the shard, sample key or option at fault."""

from __future__ import annotations


class DataError(Exception):
    """Base class: something about the data (source, shards, masks) is wrong."""


class SourceError(DataError):
    """A labelled image source cannot be read (missing package or files, bad tree)."""


class ShardError(DataError):
    """A shard or one of its samples is corrupt, truncated or incomplete."""

    def __init__(self, shard: str, message: str, key: str | None = None):
        self.shard = shard
        self.key = key
        where = f"shard {shard}" + (f", sample {key!r}" if key else "")
        super().__init__(f"{where}: {message}")


class ManifestError(DataError):
    """A shard set has no usable manifest, or the manifest disagrees with the files."""


class MaskError(DataError, ValueError):
    """Masks missing, an alpha that was not stored, or a mask set that does not fit the run."""
