"""A job's loggers: :func:`instantiate_loggers` builds the ``logger`` group (W&B offline unless
credentials exist, one W&B run per run dir), :func:`finish_loggers` logs the results row and
closes them; :class:`CSVLogger` is Lightning's, made to keep one ``metrics.csv`` across a run's
stages."""

from __future__ import annotations

import csv
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


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


def _wandb_mode(logger_cfg: DictConfig) -> None:
    """W&B must never hang or fail a run: offline unless credentials exist."""
    if logger_cfg.get("offline") is not None:
        return
    logged_in = bool(os.environ.get("WANDB_API_KEY")) or (
        Path.home().joinpath(".netrc").is_file()
        and "api.wandb.ai" in Path.home().joinpath(".netrc").read_text(errors="ignore")
    )
    offline = os.environ.get("WANDB_MODE", "") in ("offline", "disabled") or not logged_in
    if offline and not os.environ.get("WANDB_MODE"):
        log.warning("W&B: not logged in (no WANDB_API_KEY / ~/.netrc): logging offline")
    with open_dict(logger_cfg):
        logger_cfg.offline = offline


def instantiate_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """The loggers of ``cfg.logger`` (each entry with a ``_target_``), writing under ``run_dir``."""
    loggers = []
    for name, lg in (cfg.get("logger") or {}).items():
        if not isinstance(lg, DictConfig) or "_target_" not in lg:
            continue
        lg = lg.copy()
        if "WandbLogger" in lg._target_:
            os.environ.setdefault("WANDB_SILENT", "true")
            _wandb_mode(lg)
            id_file = run_dir / "wandb_id.txt"
            with open_dict(lg):
                if lg.get("id") is None:
                    # the same run dir continues the same W&B run after a resume
                    if id_file.is_file():
                        lg.id = id_file.read_text().strip()
                    else:
                        lg.id = uuid.uuid4().hex[:8]  # a W&B run id, known before W&B starts
                lg.resume = "allow"
            logger = instantiate(lg)
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(str(lg.id))
        else:
            logger = instantiate(lg)
        log.debug("logger %s: %s", name, lg._target_)
        loggers.append(logger)
    return loggers


def finish_loggers(loggers: Iterable, row: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Log ``row``'s ``keys`` (NaN left out) as ``results/<key>`` and close every logger."""
    keys = tuple(keys)
    for lg in loggers:
        lg.log_metrics({f"results/{k}": row[k] for k in keys if row[k] == row[k]})
        lg.finalize("success")
        if isinstance(lg, L.pytorch.loggers.WandbLogger):
            lg.experiment.finish()  # else the next run in this process (a teacher's student) joins it
