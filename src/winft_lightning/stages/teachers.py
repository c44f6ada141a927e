"""The study's teachers: SPEC 9's K baseline ViTs of one recipe (:func:`ensure_teachers`, each
the cached teacher a main job of that config would use), or the user's own trained files
(:func:`given_teachers`); :func:`teacher_config` composes a teacher's train config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from winft_lightning.stages.cache import ensure_shards, ensure_teacher, ensure_teacher_shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Teacher:
    """One trained teacher: its ``seed``, checkpoint, file hash, the shard set it was trained
    and tested on (whose test split the claims read) and its results row (top-1, fit time)."""

    seed: int
    ckpt: Path
    sha256: str
    shards: Path
    row: dict[str, Any] | None


def teacher_config(
    experiment: str, overrides: list[str], seed: int, root_dir: str | Path | None = None
) -> DictConfig:
    """The train config of ``experiment`` with ``overrides`` and ``teacher.seed=seed``, composed
    as ``python -m winft_lightning`` would compose it (inside or outside a Hydra app), writing
    under ``root_dir`` (default: as that command would, ``$WINFT_ROOT`` or the cwd)."""
    argv = [f"experiment={experiment}", *overrides, f"teacher.seed={seed}"]
    if root_dir is not None:
        argv.append(f"paths.root_dir={root_dir}")
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=argv)
    with initialize_config_module("winft_lightning.conf", version_base="1.3"):
        return compose(config_name="train", overrides=argv)


def ensure_teachers(
    experiment: str, overrides: list[str], seeds: list[int], root_dir: str | Path | None = None
) -> list[Teacher]:
    """SPEC 9's K teachers: one baseline ViT per seed by one recipe (``experiment`` with
    ``overrides``), each the cached teacher a main job of that config and ``teacher.seed``
    would use: trained (one after another) or reused from the store under ``root_dir``."""
    teachers = []
    for seed in seeds:
        cfg = teacher_config(experiment, list(overrides), int(seed), root_dir)
        shards = ensure_teacher_shards(cfg, ensure_shards(cfg))
        ckpt, row, sha256 = ensure_teacher(cfg, shards)
        top1 = row and row.get("top1")
        log.info("teacher seed %d: %s (top-1 %s)", seed, ckpt, top1)
        teachers.append(Teacher(int(seed), ckpt, sha256, shards, row))
    return teachers


def given_teachers(spec: dict[str, Any], root_dir: Path) -> tuple[list[Teacher], dict]:
    """The user's own trained teachers (``claims.teachers.ckpts``, in any format the checkpoint
    reader accepts), numbered 0..K-1, on the shard set of ``experiment`` with ``overrides``
    (built once and cached), and the experiment's net config: the architecture of a plain
    weights file."""
    from winft_lightning.models.teacher import plain_file_net
    from winft_lightning.runtime.checkpoints import checkpoint_file

    teachers, net = [], None
    for i, ckpt in enumerate(spec["ckpts"]):
        path = checkpoint_file(Path(ckpt).expanduser(), f"study.claims.teachers.ckpts[{i}]")
        cfg = teacher_config(spec["experiment"], [*spec["overrides"], f"teacher.ckpt={path}"], i,
                             root_dir)  # fmt: skip
        shards = ensure_shards(cfg)
        path, _, sha256 = ensure_teacher(cfg, shards)
        teachers.append(Teacher(i, path, sha256, shards, None))
        net = plain_file_net(OmegaConf.to_container(cfg.model.net, resolve=True))
    return teachers, net
