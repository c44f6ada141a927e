"""Fit, test and report one LightningModule from a composed Hydra config."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from winft_lightning.lit.callbacks import TrainThroughput
from winft_lightning.runtime import world as worlds
from winft_lightning.runtime.checkpoints import read_checkpoint
from winft_lightning.runtime.machine import describe

log = logging.getLogger(__name__)

RESULT_KEYS = ("top1", "top5", "eo", "eo_ratio", "images_per_s")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the option."""


def module_class(model_cfg: DictConfig) -> type:
    target = model_cfg.get("_target_")
    try:
        return get_class(target)
    except Exception as err:
        raise ConfigError(f"model._target_={target!r} is not an importable class: {err}") from err


def validate_config(cfg: DictConfig) -> None:
    """Refuse a config that cannot run, before any work, naming the option."""
    model = cfg.model
    cls = module_class(model)
    net = model.net
    img, patch = net.get("img_size"), net.get("patch_size")
    if img is None or patch is None or int(img) % int(patch) != 0:
        raise ConfigError(
            f"model.net.img_size={img} is not divisible by model.net.patch_size={patch}"
        )
    alpha = model.get("alpha")
    if alpha is not None and not 0.0 < float(alpha) <= 1.0:
        raise ConfigError(f"model.alpha={alpha} is outside (0, 1]")
    beta = model.get("beta")
    if beta is not None and not 0.0 <= float(beta) < 1.0:
        raise ConfigError(f"model.beta={beta} is outside [0, 1)")
    for name in ("lambda1", "lambda2"):
        value = model.get(name)
        if value is not None and float(value) < 0:
            raise ConfigError(f"model.{name}={value} is negative")
    if getattr(cls, "uses_masks", False) and cfg.analyze.get("mask_root") is None:
        stored = [float(a) for a in cfg.analyze.alphas]
        if not any(abs(float(alpha) - a) < 1e-9 for a in stored):
            raise ConfigError(
                f"model.alpha={alpha} is not among the analysed alphas analyze.alphas={stored}"
            )
    check_launch(cfg)
    if cfg.get("ckpt_path") not in (None, "last"):
        if not Path(cfg.ckpt_path).is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist")
        check_checkpoint_geometry(cfg.ckpt_path, model.net, "ckpt_path")
    teacher = cfg.get("teacher") or {}
    if getattr(cls, "uses_masks", False) and teacher.get("ckpt"):
        if not Path(teacher.ckpt).is_file():
            raise ConfigError(f"teacher.ckpt={teacher.ckpt} does not exist")
        if str(teacher.ckpt).endswith(".ckpt"):
            # masks live on the patch grid: the teacher may differ in width or depth
            check_checkpoint_geometry(
                teacher.ckpt, model.net, "teacher.ckpt", ("img_size", "patch_size")
            )


def _device_count(devices: Any, accelerator: str) -> int:
    if isinstance(devices, list | tuple):
        return len(devices)
    if str(devices) in ("auto", "-1"):
        return torch.cuda.device_count() if accelerator in ("gpu", "cuda", "auto") else 1
    return (
        int(str(devices).split(",")[0]) if "," not in str(devices) else len(str(devices).split(","))
    )


def check_launch(cfg: DictConfig) -> None:
    """Refuse ``strategy=ddp`` over several processes started as one plain process: Lightning
    would re-run this script per device, and every copy would build the prerequisites."""
    trainer = cfg.trainer
    strategy = trainer.get("strategy")
    target = strategy if isinstance(strategy, str) else (strategy or {}).get("_target_", "")
    spawned = "spawn" in str(target) or (
        isinstance(strategy, DictConfig) and strategy.get("start_method") in ("spawn", "fork")
    )
    if "ddp" not in str(target).lower() or spawned or worlds.current().distributed:
        return
    if "LOCAL_RANK" in os.environ:  # a launcher (SLURM, torchrun) started every process
        return
    count = _device_count(trainer.get("devices", 1), str(trainer.get("accelerator", "auto")))
    count *= int(trainer.get("num_nodes") or 1)
    if count > 1:
        raise ConfigError(
            f"trainer.strategy=ddp with {count} processes needs a launcher: run "
            f"`torchrun --nproc_per_node={trainer.get('devices')} -m winft_lightning ...` (or "
            "srun under SLURM), or use trainer=ddp_sim (spawn) on one machine"
        )


GEOMETRY_KEYS = (
    "model_name",
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "num_classes",
)


def checkpoint_net(path: str | Path) -> dict[str, Any]:
    """The ``net`` hyper-parameters stored in one of our Lightning checkpoints."""
    try:
        ckpt = read_checkpoint(path)
    except Exception as err:
        raise ConfigError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    net = (ckpt.get("hyper_parameters") or {}).get("net") if isinstance(ckpt, dict) else None
    if not isinstance(net, dict):
        raise ConfigError(f"{path} is not a winft_lightning checkpoint (no hyper_parameters.net)")
    return net


def check_checkpoint_geometry(
    path: str | Path, net_cfg: Any, option: str, keys: tuple[str, ...] = GEOMETRY_KEYS
) -> None:
    """Refuse a checkpoint of another model or geometry (``keys`` of ``net``), naming both."""
    stored = checkpoint_net(path)
    wanted = (
        OmegaConf.to_container(net_cfg, resolve=True)
        if isinstance(net_cfg, DictConfig)
        else dict(net_cfg)
    )
    diff = {k: (stored.get(k), wanted.get(k)) for k in keys
            if wanted.get(k) is not None and stored.get(k) != wanted.get(k)}  # fmt: skip
    if diff:
        theirs = ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
        ours = ", ".join(f"{k}={b}" for k, (_, b) in diff.items())
        raise ConfigError(f"{option}={path} was trained with {theirs}; this run's model has {ours}")


def instantiate_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = []
    for name, cb in (cfg.get("callbacks") or {}).items():
        if isinstance(cb, DictConfig) and "_target_" in cb:
            log.debug("callback %s: %s", name, cb._target_)
            callbacks.append(instantiate(cb))
    return callbacks


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


def make_datamodule(data_cfg: DictConfig, root: Path, use_masks: bool) -> L.LightningDataModule:
    """The whole ``data`` config as given (``data.alpha`` names the stored AWD windows; it
    references ``model.alpha``) over the shard set at ``root``; ``use_masks``: the module class's
    ``uses_masks`` (whether its batches carry windows and DIP order)."""
    return instantiate(data_cfg, root=str(root), use_masks=use_masks, _convert_="all")


def _resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.get("ckpt_path") == "last" or (cfg.get("ckpt_path") is None and last.is_file()):
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        if cfg.get("ckpt_path") == "last":
            raise ConfigError(f"ckpt_path=last but {last} does not exist")
    return cfg.get("ckpt_path")


def _best_score_in(path: str) -> float | None:
    """ModelCheckpoint's best score as saved in one of its own checkpoints."""
    ckpt = read_checkpoint(path)
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and state.get("best_model_score") is not None:
            return float(state["best_model_score"])
    return None


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
    model_cfg = cfg.model
    run_dir = Path(cfg.paths.output_dir)
    name = name or cfg.get("task_name") or module_class(model_cfg).__name__
    run_dir.mkdir(parents=True, exist_ok=True)
    cls = module_class(model_cfg)
    datamodule = make_datamodule(cfg.data, data_root, use_masks=cls.uses_masks)
    _ = datamodule.manifest  # before any work: its checks (data.num_classes, masks, views)
    model: L.LightningModule = instantiate(model_cfg, _convert_="all")
    check = getattr(datamodule, "check_geometry", None)
    if cls.uses_masks and check is not None:
        check(model.geometry())  # before any training: a mask set for another grid is refused
    callbacks = instantiate_callbacks(cfg)
    loggers = instantiate_loggers(cfg, run_dir)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer: L.Trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(
            {"model": OmegaConf.to_container(model_cfg, resolve=True), "seed": cfg.get("seed")}
        )

    start = time.perf_counter()
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=_resume_path(cfg, run_dir))
    fit_seconds = time.perf_counter() - start
    images_per_s = float(trainer.callback_metrics.get("train/images_per_s", 0.0))
    for cb in callbacks:
        if isinstance(cb, TrainThroughput) and cb.seconds > 0:
            images_per_s = cb.images_per_s(trainer.world_size)

    best, val_top1 = "", float("nan")
    if trainer.checkpoint_callback is not None:
        best = trainer.checkpoint_callback.best_model_path or ""
        score = trainer.checkpoint_callback.best_model_score
        if score is None and best and Path(best).is_file():
            score = _best_score_in(best)  # ddp_spawn: the callback's state stayed in the child
        val_top1 = 100.0 * float(score) if score is not None else val_top1
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

    n = model.num_patches
    eo = tested.get("test/eo", float("nan"))
    row = {
        "name": name,
        "module": cls.__name__,
        "top1": 100.0 * tested.get("test/top1", float("nan")),
        "top5": 100.0 * tested.get("test/top5", float("nan")),
        "val_top1": val_top1,
        "eo": eo,
        "eo_ratio": eo / n**2,
        "num_patches": n,
        "images_per_s": images_per_s,
        "alpha": model_cfg.get("alpha"),
        "beta": model_cfg.get("beta"),
        "img_size": model_cfg.net.img_size,
        "patch_size": model_cfg.net.patch_size,
        "params": sum(p.numel() for p in model.net.parameters()),
        "seed": cfg.get("seed"),
        "fit_seconds": round(fit_seconds, 2),
        "epochs": trainer.current_epoch,
        "best_ckpt": best,
        "run_dir": str(run_dir),
        "machine": describe(),  # the same seeds give other numbers on another CPU (machine.py)
        **(extra or {}),
    }
    if trainer.is_global_zero:
        (run_dir / "results.json").write_text(json.dumps(row, indent=2))
    for lg in loggers:
        lg.log_metrics({f"results/{k}": row[k] for k in RESULT_KEYS if row[k] == row[k]})
        lg.finalize("success")
        if isinstance(lg, L.pytorch.loggers.WandbLogger):
            lg.experiment.finish()  # else the next run in this process (a teacher's student) joins it
    return row
