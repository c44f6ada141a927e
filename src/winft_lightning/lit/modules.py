"""The four LightningModules: baseline ViT, AWD-ViT, AWD+DIP and WinfT.

They share one base (optimizer/scheduler as Hydra ``_partial_`` targets, top-1/top-5 and
E_O metrics, the non-finite-loss guard). Each subclass only says how a batch becomes
logits, a loss and a per-image E_O; the math lives in ``interactions`` and ``models``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import Container
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from winft_lightning import models
from winft_lightning.core import interactions as ia
from winft_lightning.core.families import FAMILIES
from winft_lightning.lit.optim import param_groups
from winft_lightning.runtime.resolvers import to_plain

STAGES = ("train", "val", "test")

log = logging.getLogger(__name__)


NET_OPTIONS = ("sparse", "winft_mode", "dip", "tile")  # passed on to models.build_vit


def as_config(obj: Any) -> dict[str, Any] | None:
    """An optimizer/scheduler given as a Hydra partial (or its config) -> its plain config."""
    if obj is None or isinstance(obj, Mapping | Container):
        return (
            dict(obj)
            if isinstance(obj, Mapping) and not isinstance(obj, Container)
            else to_plain(obj)
        )
    if isinstance(obj, functools.partial):
        target = f"{obj.func.__module__}.{obj.func.__qualname__}"
        return {
            "_target_": target,
            "_partial_": True,
            **{k: to_plain(v) for k, v in obj.keywords.items()},
        }
    raise TypeError(f"expected a Hydra _partial_ target or its config, got {type(obj).__name__}")


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite (``on_nonfinite='raise'``)."""


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    """top-1, and top-5 only where 5 < the number of classes (else it is 100 % by definition)."""
    metrics = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > 5:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


class ViTModule(L.LightningModule):
    """Baseline ViT: full attention, E_O = N**2 per image.

    net: keyword arguments of :func:`winft_lightning.models.build_vit`.
    optimizer / scheduler: Hydra ``_partial_`` targets ``optimizer(params)`` and
    ``scheduler(optimizer, total_steps)``, instantiated or as config; they are kept as plain
    config in the hyper-parameters, so ``load_from_checkpoint(path)`` needs nothing else.
    options: ``NET_OPTIONS`` go to ``build_vit``; ``param_groups`` (a list of ``{match, lr_scale,
    weight_decay}``: :func:`.optim.param_groups`) splits the optimizer's parameters by their timm
    names (``pos_embed``, ``blocks.0.attn.qkv.weight``); the
    rest are the subclass's own (alpha, ...).
    """

    attn_kind = "full"
    uses_masks = False

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Any = None,
        scheduler: Any = None,
        compile: bool = False,
        label_smoothing: float = 0.0,
        on_nonfinite: str = "raise",
        **options: Any,
    ) -> None:
        super().__init__()
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"model.on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        hparams = {
            "net": to_plain(net),
            "optimizer": as_config(optimizer),
            "scheduler": as_config(scheduler),
            "compile": compile,
            "label_smoothing": label_smoothing,
            "on_nonfinite": on_nonfinite,
            **{k: to_plain(v) for k, v in options.items()},
        }
        self.save_hyperparameters(hparams, logger=False)
        net_options = {k: v for k, v in options.items() if k in NET_OPTIONS}
        self.net = models.build_vit(**hparams["net"], attn=self.attn_kind, **net_options)
        self.grid = tuple(self.net.patch_embed.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_prefix_tokens = int(self.net.num_prefix_tokens)
        num_classes = int(self.net.num_classes)
        self.train_metrics = _metrics(num_classes, "train/")
        self.val_metrics = _metrics(num_classes, "val/")
        self.test_metrics = _metrics(num_classes, "test/")
        self.eo = nn.ModuleDict({s: MeanMetric() for s in ("fit", "val", "test")})
        # kept out of the module tree: registering it would duplicate every weight in the
        # state dict (and add `_orig_mod.` keys when compiled)
        object.__setattr__(self, "_forward", torch.compile(self.net) if compile else self.net)
        self.skipped_batches = 0
        self._skip_step = False  # set by a skipped training step, read by optimizer_step

    # --- what subclasses change -------------------------------------------------------

    def run(self, images: Tensor, batch: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        """images ``[B, 3, H, W]`` (and the batch's masks) -> (logits ``[B, classes]``, what
        :meth:`interactions` and :meth:`extra_loss` need of this forward, or None)."""
        return self._forward(images), None

    def interactions(self, batch: dict[str, Tensor], out: Any = None) -> Tensor:
        """E_O of each image, ``[B]`` float; ``out`` the second value of :meth:`run`."""
        b = batch["image"].shape[0]
        return torch.full((b,), float(self.num_patches**2), device=self.device)

    def extra_loss(
        self, batch: dict[str, Tensor], stage: str, out: Any = None
    ) -> dict[str, Tensor]:
        """Loss terms beyond cross-entropy, already weighted: name -> scalar."""
        return {}

    def forward(self, images: Tensor, batch: dict[str, Tensor] | None = None) -> Tensor:
        """images ``[B, 3, H, W]`` -> logits ``[B, classes]``."""
        return self.run(images, batch)[0]

    # --- shared ---------------------------------------------------------------------

    @property
    def ce_weight(self) -> float:
        return 1.0

    def model_step(self, batch: dict[str, Tensor], stage: str) -> tuple[Tensor, Tensor, dict, Any]:
        """-> (loss, logits, weighted loss terms, the forward's other outputs: see :meth:`run`)."""
        logits, out = self.run(batch["image"], batch)
        ce = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        terms = {"ce": self.ce_weight * ce, **self.extra_loss(batch, stage, out)}
        return sum(terms.values()), logits, terms, out

    def _step(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> Tensor:
        loss, logits, terms, out = self.model_step(batch, stage)
        if stage == "train" and self._non_finite(loss, terms, batch, batch_idx):
            self._skip_step = True
            return self._null_loss()
        bs = batch["image"].shape[0]
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach(), batch["label"])
        eo = self.eo["fit" if stage == "train" else stage]
        eo.update(self.interactions(batch, out).float())
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss.detach(),
            on_step=on_step,
            on_epoch=True,
            prog_bar=on_step,
            batch_size=bs,
            sync_dist=True,  # averaged over DDP ranks (a scalar; free beside the gradients)
        )
        if len(terms) > 1:
            for name, value in terms.items():
                self.log(
                    f"{stage}/{name}",
                    value.detach(),
                    on_step=False,
                    on_epoch=True,
                    batch_size=bs,
                    sync_dist=True,
                )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        self.log(f"{stage}/eo", eo, on_step=False, on_epoch=True)
        return loss

    def _non_finite(self, loss: Tensor, terms: dict, batch: dict, batch_idx: int) -> bool:
        """Whether this training step is skipped; raises under ``on_nonfinite='raise'``.

        Under ``skip`` the decision is collective (one all-reduce per step, any rank's
        non-finite loss skips the step on every rank), so DDP ranks stay in step."""
        local = not bool(torch.isfinite(loss))
        skip = self.hparams.on_nonfinite == "skip"
        if skip and self._trainer is not None:
            anywhere = self.trainer.strategy.reduce_boolean_decision(local, all=False)
        else:
            anywhere = local
        if not anywhere:
            return False
        where = f"global step {self.global_step} (batch {batch_idx}"
        if local:
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            keys = list(batch.get("key", []))[:8]
            msg = (
                f"non-finite training loss {loss.item()} at {where}, keys {keys}); "
                f"loss terms: {detail}"
            )
        else:
            msg = f"non-finite training loss on another rank at {where})"
        if not skip:
            raise NonFiniteLossError(msg + "; the last good checkpoint is kept")
        self.skipped_batches += 1
        if local and self.global_rank != 0:
            log.warning("rank %d skipping batch: %s", self.global_rank, msg)
        self.print(f"skipping batch ({self.skipped_batches} so far): {msg}")
        return True

    def _null_loss(self) -> Tensor:
        """A loss whose gradient is exactly zero for every trainable weight (even a NaN one).

        Returned by a skipped step, so every rank runs the same backward (DDP's gradient
        all-reduce included) and no rank returns None."""
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self._skip_step = False
        return self._step(batch, batch_idx, "train")

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Under ``on_nonfinite='skip'``: run the closure (training step, backward), then call
        ``optimizer.step`` (with any precision plugin: AMP unscale, clipping) only when no rank
        saw a non-finite loss. Otherwise Lightning's default."""
        if self.hparams.on_nonfinite != "skip" or optimizer_closure is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        loss = optimizer_closure()
        if self._skip_step:
            return None  # decided on every rank alike: no rank steps
        optimizer.step(closure=lambda: loss)
        return None

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, batch_idx, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        if self.hparams.optimizer is None:
            raise ValueError(f"{type(self).__name__} has no optimizer config (model.optimizer)")
        make = instantiate(self.hparams.optimizer)
        groups = self.hparams.get("param_groups")
        if groups:  # lr and decay by parameter name (lit.optim.param_groups)
            kw = getattr(make, "keywords", {})
            if kw.get("lr") is None:
                raise ValueError(
                    "model.param_groups scales the optimizer's lr: set model.optimizer.lr"
                )
            named = ((n.removeprefix("net."), p) for n, p in self.named_parameters())  # timm's
            params = param_groups(named, groups, float(kw["lr"]), kw.get("weight_decay"))
        else:
            params = self.parameters()
        optimizer = make(params=params)
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 10_000
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer, total_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def geometry(self) -> dict[str, Any]:
        """What a mask set must match: image size, patch size, grid, N, prefix tokens."""
        net = self.hparams.net
        return {
            "model_name": net.get("model_name"),
            "img_size": int(self.net.patch_embed.img_size[0]),
            "patch_size": int(self.net.patch_embed.patch_size[0]),
            "grid": list(self.grid),
            "num_patches": self.num_patches,
            "num_prefix_tokens": self.num_prefix_tokens,
        }


class AWDViTModule(ViTModule):
    """AWD-ViT: every block's patch attention restricted to the batch's windows (SPEC 2)."""

    attn_kind = "awd"
    uses_masks = True

    def __init__(self, net: Mapping[str, Any], *args: Any, alpha: float = 0.1, **kwargs: Any):
        ia.check_alpha(alpha, "model.alpha")
        super().__init__(net, *args, alpha=alpha, **kwargs)

    def keep(self, batch: dict[str, Tensor]) -> Tensor | None:
        """DIP mask M ``[B, N]`` of this batch (None: nothing dropped)."""
        return None

    def run(self, images: Tensor, batch: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        if batch is None or "windows" not in batch:
            raise KeyError(f"{type(self).__name__} needs the batch's 'windows' [B, N, 4]")
        keep = self.keep(batch)  # once a step: the forward and E_O share it
        inputs = models.net_inputs(self.net, windows=batch["windows"], keep=keep)
        return self._forward(images, inputs), keep

    def interactions(self, batch: dict[str, Tensor], out: Any = None) -> Tensor:
        return ia.window_areas(batch["windows"]).sum(dim=1)


class AWDDIPViTModule(AWDViTModule):
    """AWD + DIP: AWD windows, and the floor(beta*N) least discriminative patch tokens zeroed
    at the input of every block (SPEC 3; ``dip=key_mask`` is the ablation that removes
    them from every key set instead). E_O counts the responsive fields (dropped keys out)."""

    def __init__(
        self,
        net: Mapping[str, Any],
        *args: Any,
        beta: float = 0.2,
        dip: str = "multiply",
        **kwargs: Any,
    ):
        ia.check_beta(beta, "model.beta")  # alpha: AWDViTModule's
        super().__init__(net, *args, beta=beta, dip=dip, **kwargs)

    def keep(self, batch: dict[str, Tensor]) -> Tensor:
        if "dip_order" not in batch:
            raise KeyError(f"{type(self).__name__} needs the batch's 'dip_order' [B, N]")
        return ia.dip_keep(batch["dip_order"], self.hparams.beta)

    def interactions(self, batch: dict[str, Tensor], out: Any = None) -> Tensor:
        """E_O: the responsive fields' sizes summed, from this step's keep mask ``out`` (the
        one :meth:`run` built) and the windows, without forming the ``[B, N, N]`` field."""
        keep = out if out is not None else self.keep(batch)
        return ia.field_size_from_windows(batch["windows"], keep, self.grid).sum(dim=1).float()


class WinfTModule(ViTModule):
    """WinfT: window-free attention (SPEC 5), loss lambda1 * CE + lambda2 * BCE(w', w_gt).

    The ground truth w_gt is the responsive field of the batch's windows and DIP order; it is
    needed for training (and logged on val/test when the batch carries masks), never for
    prediction. E_O is the True count of the predicted W, averaged over blocks."""

    attn_kind = "winft"
    uses_masks = True

    def __init__(
        self,
        net: dict[str, Any],
        *args: Any,
        alpha: float = 0.1,
        beta: float = 0.0,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        **kwargs: Any,
    ):
        ia.check_alpha(alpha, "model.alpha")
        ia.check_beta(beta, "model.beta")
        ia.check_loss_weight(lambda1, "model.lambda1")
        ia.check_loss_weight(lambda2, "model.lambda2")
        super().__init__(
            net, *args, alpha=alpha, beta=beta, lambda1=lambda1, lambda2=lambda2, **kwargs
        )

    def run(
        self, images: Tensor, batch: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, models.WinftOutput]:
        """The network returns E_O and, when the batch carries the masks of the ground truth
        w_gt, the BCE (eq. 12) that each block takes against it, with the class logits."""
        w_gt = None
        if batch is not None and "windows" in batch and "dip_order" in batch:
            w_gt = ia.responsive_field(
                batch["windows"], batch["dip_order"], self.hparams.beta, self.grid
            )
        out = self._forward(images, models.net_inputs(self.net, w_gt=w_gt))
        return out.logits, out

    @property
    def ce_weight(self) -> float:
        return float(self.hparams.lambda1)

    def interactions(self, batch: dict[str, Tensor], out: Any = None) -> Tensor:
        return out.eo.float()

    def extra_loss(
        self, batch: dict[str, Tensor], stage: str, out: Any = None
    ) -> dict[str, Tensor]:
        if out.bce is None:
            if stage == "train":
                raise KeyError("WinfTModule training needs 'windows' and 'dip_order' in the batch")
            return {}
        return {"bce": self.hparams.lambda2 * out.bce}


MODULES = {f.name: globals()[f.module] for f in FAMILIES}  # config name -> class (families.py)
