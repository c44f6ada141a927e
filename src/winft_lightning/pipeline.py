"""Prerequisites that build themselves: shards -> teacher -> masks, each cached under a key
of the config that made it, so the next run reuses it (and says so)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def config_key(*parts: Any) -> str:
    """Short stable hash of resolved config fragments."""
    plain = [
        OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p for p in parts
    ]
    blob = json.dumps(plain, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _cache(cfg: DictConfig, kind: str, key: str) -> Path:
    return Path(cfg.paths.cache_dir) / kind / key


def ensure_shards(cfg: DictConfig) -> Path:
    """The run's WebDataset shards: ``data.root`` if given, else built from ``data.source``."""
    from winft_lightning.prepare import prepare_shards

    if cfg.data.get("root"):
        root = Path(cfg.data.root)
        if not (root / "manifest.json").is_file():
            raise FileNotFoundError(f"data.root={root} has no manifest.json (not a shard set)")
        log.info("shards: using data.root=%s", root)
        return root
    source = cfg.data.source
    out = _cache(cfg, "shards", f"{source.name}-{config_key(source)}")
    if (out / "manifest.json").is_file():
        log.info("shards: reusing cached %s", out)
        return out
    log.info("shards: building %s from source %s", out, source.name)
    prepare_shards(source, out)
    return out


def teacher_key(cfg: DictConfig, shards: Path) -> str:
    manifest = json.loads((shards / "manifest.json").read_text())
    data_opts = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if k != "root"}
    return config_key(
        cfg.teacher.model,
        cfg.teacher.max_epochs,
        cfg.teacher.get("limit_train_batches"),
        data_opts,
        manifest.get("splits"),
        cfg.teacher.seed,
    )


def ensure_teacher(cfg: DictConfig, shards: Path) -> tuple[Path, dict | None]:
    """The teacher checkpoint: ``teacher.ckpt`` if given, else a cached or freshly trained
    baseline ViT (``teacher.model`` for ``teacher.max_epochs``). Returns (path, its results)."""
    from winft_lightning.train import fit_and_test

    if cfg.teacher.get("ckpt"):
        path = Path(cfg.teacher.ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"teacher.ckpt={path} does not exist")
        log.info("teacher: using teacher.ckpt=%s", path)
        return path, None
    out = _cache(cfg, "teachers", teacher_key(cfg, shards))
    ckpt, results = out / "teacher.ckpt", out / "results.json"
    if ckpt.is_file() and results.is_file():
        log.info("teacher: reusing cached %s", ckpt)
        return ckpt, json.loads(results.read_text())
    L.seed_everything(cfg.teacher.seed, workers=True)
    if int(cfg.teacher.max_epochs) == 0:
        return _untrained_teacher(cfg, ckpt), None
    log.info("teacher: training a baseline ViT for %s epochs -> %s", cfg.teacher.max_epochs, out)
    tcfg = cfg.copy()
    with open_dict(tcfg):
        tcfg.seed = cfg.teacher.seed
        tcfg.ckpt_path = None
        tcfg.train = True
        tcfg.test = True
    overrides: dict[str, Any] = {"max_epochs": int(cfg.teacher.max_epochs)}
    if cfg.teacher.get("limit_train_batches") is not None:
        overrides["limit_train_batches"] = cfg.teacher.limit_train_batches
    row = fit_and_test(tcfg, cfg.teacher.model, shards, out / "run", "teacher ViT", overrides)
    best = Path(row["best_ckpt"]) if row["best_ckpt"] else None
    if best is None or not best.is_file():
        last = out / "run" / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise RuntimeError(f"teacher training in {out / 'run'} left no checkpoint")
        best = last
    tmp = ckpt.with_suffix(".tmp")
    shutil.copyfile(best, tmp)
    tmp.replace(ckpt)  # complete file or none: never a half-copied teacher
    results.write_text(json.dumps(row, indent=2))
    return ckpt, row


def _untrained_teacher(cfg: DictConfig, ckpt: Path) -> Path:
    """teacher.max_epochs=0: a randomly initialised ViT, saved as a Lightning checkpoint."""
    from hydra.utils import instantiate

    if ckpt.is_file():
        log.info("teacher: reusing cached untrained teacher %s", ckpt)
        return ckpt
    log.info("teacher: teacher.max_epochs=0, saving a randomly initialised ViT -> %s", ckpt)
    module = instantiate(cfg.teacher.model)
    trainer = L.Trainer(
        max_epochs=0, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.strategy.connect(module)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    trainer.save_checkpoint(tmp)
    tmp.replace(ckpt)
    return ckpt


def ensure_masks(cfg: DictConfig, teacher: Path, shards: Path) -> Path:
    """Shards with AWD windows (every ``analyze.alphas``) and DIP order beside each image."""
    from winft_lightning.analyze import analyze_shards, file_sha256

    if cfg.analyze.get("mask_root"):
        root = Path(cfg.analyze.mask_root)
        if not (root / "manifest.json").is_file():
            raise FileNotFoundError(f"analyze.mask_root={root} has no manifest.json")
        log.info("masks: using analyze.mask_root=%s", root)
        return root
    key = config_key(file_sha256(teacher), list(cfg.analyze.alphas), shards.name)
    out = _cache(cfg, "masks", key)
    if (out / "manifest.json").is_file():
        log.info("masks: reusing cached %s", out)
        return out
    log.info("masks: analysing %s with teacher %s -> %s", shards, teacher, out)
    analyze_shards(
        teacher=teacher,
        shards=shards,
        out_dir=out,
        alphas=list(cfg.analyze.alphas),
        batch_size=int(cfg.analyze.batch_size),
    )
    return out
