"""Small Lightning callbacks the configs refer to."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class TrainThroughput(L.Callback):
    """Training images/s over the fit: wall time from each train batch's end to the next
    (data loading included, validation excluded), summed over the run.

    ``images_per_s`` is this rank's figure times the world size (ranks run in lock-step)."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._mark: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        if self._mark is not None:
            self.seconds += now - self._mark
            self.images += int(batch["image"].shape[0])
        self._mark = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = None
        if self.seconds > 0:
            pl_module.log(
                "train/images_per_s", self.images_per_s(trainer.world_size), sync_dist=False
            )

    def images_per_s(self, world_size: int = 1) -> float:
        return world_size * self.images / self.seconds if self.seconds > 0 else 0.0


class RankSampleLog(L.Callback):
    """Audit of the data each DDP rank trains on: ``<dir>/train_keys_rank<r>.txt``, one
    ``<epoch> <sample key>`` per line, and the number of batches in the first line's header."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.keys: list[str] = []
        self.batches = 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.keys.extend(f"{trainer.current_epoch} {key}" for key in batch["key"])
        self.batches += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from pathlib import Path

        path = Path(self.dirpath) / f"train_keys_rank{trainer.global_rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# batches={self.batches}\n" + "\n".join(self.keys) + "\n")
