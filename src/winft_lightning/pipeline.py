"""The run's prerequisites, built in order: shards -> teacher -> masks.

Each is a cache entry of :mod:`winft_lightning.stages.cache` (built once however many processes
ask for it, reused by every later run); :func:`prerequisites` chains them for one job. Inside a
torchrun/SLURM world the ranks build together: shards once, the teacher as one DDP run over
every rank, the analysis split over the ranks' shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from winft_lightning.stages.cache import (
    ensure_masks,
    ensure_shards,
    ensure_teacher,
    ensure_teacher_shards,
)

__all__ = ["Prerequisites", "prerequisites"]


@dataclass(frozen=True)
class Prerequisites:
    """What one job trains on: its shard set (with masks beside each image when its module reads
    them), and the teacher those masks came from, with the teacher's results row when it was
    trained here (None for a module without masks, or a given ``teacher.ckpt``)."""

    data_root: Path
    teacher: Path | None = None
    teacher_row: dict[str, Any] | None = None


def prerequisites(cfg: DictConfig, uses_masks: bool = True) -> Prerequisites:
    """The chain shards -> teacher -> masks for one job (``uses_masks``: its module's)."""
    shards = ensure_shards(cfg)
    if not uses_masks:
        return Prerequisites(shards)
    teacher, row, sha256 = ensure_teacher(cfg, ensure_teacher_shards(cfg, shards))
    return Prerequisites(ensure_masks(cfg, teacher, sha256, shards), teacher, row)
