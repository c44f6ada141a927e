"""Lightning's CSVLogger, made to keep one ``metrics.csv`` across a run's stages."""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class ContinuingExperimentWriter(ExperimentWriter):
    """An ExperimentWriter that adopts the columns already in ``metrics.csv`` before it saves.

    Under ``ddp_spawn`` fit and test each run in fresh processes that receive the writer as
    the parent pickled it, before fit logged anything. Lightning's writer would then rewrite
    the file with only the test columns and fail on fit's rows."""

    def save(self) -> None:
        if self.metrics and os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                header = next(csv.reader(file), [])
            missing = set(header) - set(self.metrics_keys)
            if missing:
                self.metrics_keys = sorted(set(self.metrics_keys) | missing)
        super().save()


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` (same arguments and layout) whose fit, test and
    results rows land in one ``metrics.csv`` however the stages are launched."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
