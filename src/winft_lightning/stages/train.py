"""Fit, test and report one LightningModule from a composed Hydra config: instantiate the data,
model, callbacks, loggers and trainer, fit, test the best checkpoint, write ``results.json``.

The config was checked by :mod:`.validate` before any work; the results row is
:func:`.results.results_row`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from winft_lightning.lit.callbacks import InteractionFigures, instantiate_callbacks
from winft_lightning.lit.loggers import finish_loggers, instantiate_loggers
from winft_lightning.runtime import world as worlds
from winft_lightning.stages.results import (
    RESULT_KEYS,
    best_checkpoint,
    results_row,
    train_images_per_s,
)
from winft_lightning.stages.validate import module_class

log = logging.getLogger(__name__)


def make_datamodule(
    data_cfg: DictConfig, root: Path, module: L.LightningModule | None = None
) -> L.LightningDataModule:
    """The whole ``data`` config as given, over the shard set at ``root``, for ``module``: the
    module decides what its batches carry (``uses_masks``: windows and DIP order) and, with its
    own ``alpha`` (``model.alpha``, the one owner), which stored AWD windows load. No module:
    images and labels only."""
    use_masks = bool(getattr(module, "uses_masks", False))
    alpha = module.hparams.get("alpha") if use_masks else None
    return instantiate(data_cfg, root=str(root), use_masks=use_masks, alpha=alpha, _convert_="all")


def _resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint ``fit`` resumes from: ``ckpt_path``, else this run dir's last.ckpt (a
    rerun in the same dir, a requeued SLURM job). Under SLURM, Lightning's requeue signal
    (``--signal=SIGUSR1@90``) also leaves a mid-epoch ``hpc_ckpt_<n>.ckpt`` here; the loaders
    replay an epoch's batches exactly only from its start, so last.ckpt wins over it (Lightning
    takes the hpc checkpoint only when there is no last.ckpt yet)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    hpc = sorted(p.name for p in run_dir.glob("hpc_ckpt_*.ckpt"))
    wanted = cfg.get("ckpt_path") == "last" or cfg.get("ckpt_path") is None
    if wanted and last.is_file():  # ckpt_path=last without one: refused by validate_config
        log.info("resuming from %s%s", last, f" (not from the mid-epoch {hpc})" if hpc else "")
        return str(last)
    if cfg.get("ckpt_path") is None and hpc and worlds.slurm_layout() is not None:
        log.warning(
            "Lightning resumes from its newest mid-epoch checkpoint of %s (no last.ckpt yet): "
            "the rest of that epoch does not replay exactly the batches an uninterrupted run "
            "sees",
            hpc,
        )
    return cfg.get("ckpt_path")


def destroy_process_group() -> None:
    # without it about one DDP run in four aborts at interpreter exit (rc 134)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def fit_and_test(
    cfg: DictConfig, data_root: Path, name: str | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One job: train ``cfg.model`` on the shards at ``data_root``, test its best checkpoint,
    and write ``results.json`` (the row, plus ``extra`` fields) into ``cfg.paths.output_dir``,
    where the job's callbacks and loggers also write. Returns the results row."""
    run_dir = Path(cfg.paths.output_dir)
    cls = module_class(cfg.model)
    name = name or cfg.get("task_name") or cls.__name__
    run_dir.mkdir(parents=True, exist_ok=True)
    model: L.LightningModule = instantiate(cfg.model, _convert_="all")
    datamodule = make_datamodule(cfg.data, data_root, model)  # the model's alpha: its windows
    _ = datamodule.manifest  # before any work: its checks (data.num_classes, masks, views)
    check = getattr(datamodule, "check_geometry", None)
    if cls.uses_masks and check is not None:
        check(model.geometry())  # before any training: a mask set for another grid is refused
    callbacks = instantiate_callbacks(cfg)
    for cb in callbacks:  # the run's explorer analyses the run's teacher
        if isinstance(cb, InteractionFigures):
            cb.teacher_ckpt = (extra or {}).get("teacher_ckpt")
    loggers = instantiate_loggers(cfg, run_dir)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer: L.Trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(
            {"model": OmegaConf.to_container(cfg.model, resolve=True), "seed": cfg.get("seed")}
        )

    start = time.perf_counter()
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=_resume_path(cfg, run_dir))
    fit_seconds = time.perf_counter() - start
    images_per_s = train_images_per_s(trainer, callbacks)

    best, val_top1 = best_checkpoint(trainer)
    tested: dict[str, float] = {}
    if cfg.get("test", True):
        ckpt = best if best and Path(best).is_file() else None
        if ckpt is None and not cfg.get("train", True) and cfg.get("ckpt_path"):
            ckpt = str(cfg.ckpt_path)  # test-only run of a given checkpoint
        if ckpt is None:
            log.warning("%s: no best checkpoint, testing the current weights", name)
        out = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        tested = {k: float(v) for k, v in (out[0] if out else {}).items()}
    if not worlds.current().distributed:
        destroy_process_group()
    # in a torchrun world the process group lives on: the teacher's DDP run and the student's
    # share it (a second rendezvous on torchrun's store can meet the first one's stale keys)

    row = results_row(
        cfg, model, trainer, name=name, tested=tested, fit_seconds=fit_seconds,
        images_per_s=images_per_s, best=best, val_top1=val_top1, extra=extra,
    )  # fmt: skip
    if trainer.is_global_zero:
        (run_dir / "results.json").write_text(json.dumps(row, indent=2))
    finish_loggers(loggers, row, RESULT_KEYS)
    return row
