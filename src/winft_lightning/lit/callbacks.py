"""Small Lightning callbacks the configs refer to, and :func:`instantiate_callbacks` (the
``callbacks`` group -> callback objects)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks of ``cfg.callbacks`` (each entry with a ``_target_``; null entries off)."""
    callbacks = []
    for name, cb in (cfg.get("callbacks") or {}).items():
        if isinstance(cb, DictConfig) and "_target_" in cb:
            log.debug("callback %s: %s", name, cb._target_)
            callbacks.append(instantiate(cb))
    return callbacks


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
        path = Path(self.dirpath) / f"train_keys_rank{trainer.global_rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# batches={self.batches}\n" + "\n".join(self.keys) + "\n")


class InteractionFigures(L.Callback):
    """The run's patch interactions drawn at the end of fit, on the first images of the first
    validation batch: the analyzed AWD windows, the responsive fields with WinfT's predicted
    sum of W beside them (Fig. 4/10) and, for full-attention models, the model's own U rows
    (Fig. 3). PNGs go to ``dirpath``; W&B gets them with ``log_image``, TensorBoard with
    ``add_figure``. With ``explorer``, the same images' interactive explorer
    (:func:`interaction_explorer`) goes to ``dirpath/explorer.html`` and to W&B as an HTML
    panel (``figures/explorer``). ``teacher_ckpt``: the run's teacher, set by
    ``stages.train.fit_and_test`` from the run's prerequisites."""

    def __init__(self, dirpath: str, num_images: int = 2, explorer: bool = True) -> None:
        self.dirpath = dirpath
        self.num_images = int(num_images)
        self.explorer = bool(explorer)
        self.teacher_ckpt: str | None = None
        self.batch: dict[str, Any] | None = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and trainer.is_global_zero:
            k = self.num_images
            self.batch = {n: v[:k].detach().cpu() for n, v in batch.items() if hasattr(v, "cpu")}
            self.batch["key"] = list(batch.get("key") or [])[:k]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.batch is None:
            return
        from winft_lightning import figures

        out = Path(self.dirpath)
        was_training = pl_module.training
        pl_module.eval()
        page = None
        try:
            drawn = interaction_figures(pl_module, self.batch)
            if self.explorer:
                with torch.no_grad():
                    page = interaction_explorer(
                        pl_module, self.batch, out / "explorer.html", self.teacher_ckpt
                    )
        finally:
            pl_module.train(was_training)
        for name, fig in drawn.items():
            path = figures.save(fig, out / f"{name}.png")
            for lg in trainer.loggers:
                if isinstance(lg, L.pytorch.loggers.WandbLogger):
                    lg.log_image(key=f"figures/{name}", images=[str(path)])
                elif isinstance(lg, L.pytorch.loggers.TensorBoardLogger):
                    lg.experiment.add_figure(f"figures/{name}", fig, trainer.global_step)
        for lg in trainer.loggers if page is not None else ():
            if isinstance(lg, L.pytorch.loggers.WandbLogger):  # an HTML panel, offline too
                import wandb

                lg.experiment.log({"figures/explorer": wandb.Html(str(page), inject=False)})


def interaction_figures(module: L.LightningModule, batch: dict[str, Any]) -> dict[str, Any]:
    """name -> matplotlib Figure for each image of ``batch`` (one of our modules' batches):
    the batch's own masks as an :class:`analysis.Analysis`, and for full-attention models the
    model's own U from :func:`analysis.analyze`."""
    from winft_lightning import figures
    from winft_lightning.core.analysis import Analysis, analyze, default_patches
    from winft_lightning.models import predicted_window_sum

    grid = tuple(module.grid)
    patches = default_patches(grid)
    images = batch["image"].to(module.device)
    shown = figures.display_images(batch["image"])
    hp = module.hparams
    alpha = hp.get("alpha", 0.1)
    masks = None
    if batch.get("windows") is not None:
        masks = Analysis(grid, windows={alpha: batch["windows"]}, order=batch.get("dip_order"))
    field = masks.field(alpha, hp.get("beta") or 0.0) if masks and masks.order is not None else None
    winft_w = u = None
    if module.attn_kind == "winft":
        winft_w = predicted_window_sum(module.net, images)
    elif module.attn_kind == "full":
        u = analyze(module.net, images, grid=grid).u.cpu()
    out = {}
    for i in range(images.shape[0]):
        if u is not None:
            out[f"img{i}_uncertainty_rows"] = figures.uncertainty_rows_figure(
                shown[i], u[i], patches, grid
            )
        if masks is not None:
            out[f"img{i}_windows"] = figures.window_figure(
                shown[i], {alpha: masks.windows[alpha][i]}, patches, grid
            )
        if field is not None:
            out[f"img{i}_responsive_field"] = figures.responsive_field_figure(
                shown[i],
                field[i],
                patches,
                grid,
                winft_w=None if winft_w is None else winft_w[i],
                num_blocks=len(module.net.blocks) if winft_w is not None else None,
            )
    return out


def interaction_explorer(
    module: L.LightningModule, batch: dict[str, Any], path: Path, teacher_ckpt: str | None = None
) -> Path | None:
    """The explorer (:mod:`winft_lightning.explorer`) of ``batch``'s images at ``path``: the
    teacher's analysis (``teacher_ckpt``; a full-attention module is its own teacher) at
    every default alpha and the run's, the sliders at the run's alpha and beta, and for WinfT
    its predicted sum of W. None (and a log line) when there is no teacher to analyse."""
    from winft_lightning.core.analysis import DEFAULT_ALPHAS
    from winft_lightning.explorer import DEFAULT_BETAS, explore, write_explorer
    from winft_lightning.figures import display_images
    from winft_lightning.models import predicted_window_sum
    from winft_lightning.models.teacher import TeacherError, load_teacher, plain_file_net

    images = batch["image"].to(module.device)
    if teacher_ckpt:
        try:
            net = plain_file_net(dict(module.hparams.get("net") or {}))
            teacher, _ = load_teacher(teacher_ckpt, device=module.device, **net)
        except (TeacherError, FileNotFoundError) as err:
            log.warning(
                "explorer not written: the teacher %s cannot be read (%s)", teacher_ckpt, err
            )
            return None
    elif module.attn_kind == "full":
        teacher, teacher_ckpt = module.net, "the run's own model"
    else:
        log.info("explorer not written: a %s run without its teacher", type(module).__name__)
        return None
    alpha, beta = module.hparams.get("alpha"), module.hparams.get("beta")
    alphas = sorted({*DEFAULT_ALPHAS, *([float(alpha)] if alpha else [])})
    betas = sorted({*DEFAULT_BETAS, *([float(beta)] if beta is not None else [])})
    winft_w = predicted_window_sum(module.net, images) if module.attn_kind == "winft" else None
    packed = explore(
        teacher, images, display_images(batch["image"]), alphas=alphas, betas=betas,
        winft_w=winft_w, names=[str(k) for k in batch.get("key") or range(images.shape[0])],
        title=f"patch interactions: {type(module).__name__}", source={"teacher": str(teacher_ckpt)},
        start_alpha=alpha or None, start_beta=beta,
    )  # fmt: skip
    return write_explorer(path, packed)
