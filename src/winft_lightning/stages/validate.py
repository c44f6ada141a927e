"""Refuse a composed config that cannot run, before any work, with an error naming the option:
the model class, geometry, alpha / beta / lambdas, the analyzed alphas, the launch (plain
``ddp`` over several devices; under SLURM, the tasks against ``trainer.devices`` and
``trainer.num_nodes``), and the checkpoints a run reads (``ckpt_path``, ``teacher.ckpt``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from winft_lightning.core.interactions import check_alpha, check_beta, check_loss_weight
from winft_lightning.data.errors import MaskError
from winft_lightning.data.masks import CONTROLS, check_control_reads, match_alpha
from winft_lightning.lit.optim import check_param_groups
from winft_lightning.models.distance import check_attn_bias
from winft_lightning.models.mimetic import INITS
from winft_lightning.models.vit import check_vit_family
from winft_lightning.runtime import world as worlds
from winft_lightning.runtime.checkpoints import checkpoint_file, read_checkpoint

GEOMETRY_KEYS = (
    "model_name",
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "num_classes",
)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the option."""


def module_class(model_cfg: DictConfig) -> type:
    target = model_cfg.get("_target_")
    try:
        return get_class(target)
    except Exception as err:
        raise ConfigError(f"model._target_={target!r} is not an importable class: {err}") from err


def _check_shared_values(cfg: DictConfig) -> None:
    """The values the data and the model share have one owner each (``model.net.img_size``,
    ``data.num_classes``; the other side references it): an override of the other side that
    disagrees is refused here, naming both options."""
    shared = (
        ("model.net.img_size", "data.img_size"),
        ("data.num_classes", "model.net.num_classes"),
    )
    for owner, other in shared:
        mine, theirs = OmegaConf.select(cfg, owner), OmegaConf.select(cfg, other)
        if mine is not None and theirs is not None and int(mine) != int(theirs):
            raise ConfigError(
                f"{other}={theirs} disagrees with {owner}={mine}: {owner} owns this value "
                f"(the other follows it); set {owner} instead"
            )


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
    if net.get("model_name") is not None:
        check_vit_family(str(net.model_name), "model.net.model_name", ConfigError)
    alpha = model.get("alpha")
    if alpha is not None:
        check_alpha(alpha, "model.alpha", ConfigError)
    beta = model.get("beta")
    if beta is not None:
        check_beta(beta, "model.beta", ConfigError)
    for name in ("lambda1", "lambda2"):
        if model.get(name) is not None:
            check_loss_weight(model.get(name), f"model.{name}", ConfigError)
    if getattr(cls, "uses_masks", False) and cfg.analyze.get("mask_root") is None:
        stored = [float(a) for a in cfg.analyze.alphas]
        if match_alpha(alpha, stored) is None:
            raise ConfigError(
                f"model.alpha={alpha} is not among the analyzed alphas analyze.alphas={stored}"
            )
    _check_shared_values(cfg)
    if "alpha" in cfg.data:
        raise ConfigError(
            f"data.alpha={cfg.data.alpha} is not an option: the stored AWD windows a run loads "
            f"are model.alpha's (model.alpha={alpha}, their one owner); set model.alpha instead"
        )
    _check_control(cfg, cls)
    init = OmegaConf.select(cfg, "teacher.init")
    if init is not None and init not in INITS:
        raise ConfigError(f"teacher.init={init!r} is not one of {INITS}")
    check_attn_bias(OmegaConf.select(cfg, "teacher.attn_bias"), "teacher.attn_bias", ConfigError)
    for option in ("model.param_groups", "teacher.param_groups"):
        groups = OmegaConf.select(cfg, option)
        try:
            plain = OmegaConf.to_container(groups) if OmegaConf.is_config(groups) else groups
            check_param_groups(plain, option)
        except ValueError as err:
            raise ConfigError(str(err)) from err
    check_launch(cfg)
    _check_checkpoints(cfg, cls)


def _check_control(cfg: DictConfig, cls: type) -> None:
    """data.control: a no-teacher control replaces masks the module reads, and a known one."""
    control = cfg.data.get("control")
    if control is not None:
        if not getattr(cls, "uses_masks", False):
            raise ConfigError(
                f"data.control={control} replaces the masks a module reads, but "
                f"{cls.__name__} reads none: use an AWD, AWD+DIP or WinfT model"
            )
        if control not in CONTROLS:
            raise ConfigError(f"data.control={control!r} is not one of {CONTROLS} (or null)")
        try:  # a control must replace something the run reads (the order: only at beta > 0)
            check_control_reads(control, reads_order=float(cfg.model.get("beta") or 0.0) > 0)
        except MaskError as err:
            raise ConfigError(str(err)) from err


def _check_checkpoints(cfg: DictConfig, cls: type) -> None:
    """ckpt_path (resume) and teacher.ckpt exist and match the model's geometry, before any
    prerequisite is built."""
    model = cfg.model
    if cfg.get("ckpt_path") == "last":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"ckpt_path=last but {last} does not exist")
    elif cfg.get("ckpt_path") is not None:
        checkpoint_file(cfg.ckpt_path, "ckpt_path", ConfigError)
        check_checkpoint_geometry(cfg.ckpt_path, model.net, "ckpt_path")
    teacher = cfg.get("teacher") or {}
    if getattr(cls, "uses_masks", False) and teacher.get("ckpt"):
        checkpoint_file(teacher.ckpt, "teacher.ckpt", ConfigError)
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


def check_slurm_layout(cfg: DictConfig) -> None:
    """Under SLURM, refuse ``trainer.devices`` / ``trainer.num_nodes`` that disagree with the
    job's tasks per node and nodes (Lightning refuses them only when the Trainer starts, after
    the teacher and the masks are built), and the launch mistakes of
    :func:`~winft_lightning.runtime.world.slurm_launch_error`."""
    worlds.check_slurm_launch()
    layout = worlds.slurm_layout()
    if layout is None:
        return
    trainer = cfg.trainer
    devices = _device_count(trainer.get("devices", 1), str(trainer.get("accelerator", "auto")))
    nodes = int(trainer.get("num_nodes") or 1)
    per_node = layout["per_node"] or layout["tasks"]
    script = (
        "or change the script's `#SBATCH --ntasks-per-node` / `--nodes`; each task is one "
        "rank (scripts/slurm/one_node.sbatch passes trainer.devices=$SLURM_NTASKS_PER_NODE "
        "trainer.num_nodes=$SLURM_NNODES)"
    )
    if devices != per_node:
        raise ConfigError(
            f"trainer.devices={trainer.get('devices')} ({devices} per node), but SLURM job "
            f"{os.environ.get('SLURM_JOB_ID')} runs {per_node} tasks per node "
            f"(SLURM_NTASKS_PER_NODE={per_node}): set trainer.devices={per_node}, {script}"
        )
    if nodes != layout["nodes"]:
        raise ConfigError(
            f"trainer.num_nodes={nodes}, but SLURM job {os.environ.get('SLURM_JOB_ID')} runs on "
            f"{layout['nodes']} node(s) (SLURM_NNODES={layout['nodes']}): set "
            f"trainer.num_nodes={layout['nodes']}, {script}"
        )
    if devices * nodes != layout["tasks"]:
        raise ConfigError(
            f"trainer.devices={devices} x trainer.num_nodes={nodes} = {devices * nodes} ranks, "
            f"but srun started {layout['tasks']} task(s) (SLURM_NTASKS={layout['tasks']}): run "
            "`srun` with the job's own task count (no `-n`), " + script
        )


def check_launch(cfg: DictConfig) -> None:
    """Refuse ``strategy=ddp`` over several processes started as one plain process: Lightning
    would re-run this script per device, and every copy would build the prerequisites; and a
    SLURM job whose tasks disagree with the trainer (:func:`check_slurm_layout`)."""
    check_slurm_layout(cfg)
    if worlds.slurm_layout() is not None:
        return  # srun started every rank, as many as the trainer expects (checked above)
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
