"""``ShardDataModule``: a LightningDataModule over a shard set (prepared or analyzed).

Batches are dicts (docs/INTERFACES.md): ``image [B,3,H,W]`` float, ``label [B]`` long, ``key``
list[str]; with ``use_masks`` also ``windows [B,N,4]`` long for the run's ``alpha`` and
``dip_order [B,N]`` long (``control``: a stored retrained control instead of the member it
replaces, ``data.masks.CONTROL_MEMBERS``). Train loaders give every rank
``ceil(count / (batch * world))`` batches per epoch; val/test loaders give each sample exactly
once across ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from winft_lightning.data.errors import DataError, MaskError
from winft_lightning.data.geometry import check_augmentations, check_mask_geometry
from winft_lightning.data.loading import EpochLoader, SampleDecoder, ShardStream, slot_counts
from winft_lightning.data.masks import check_control, control_names, find_alpha, mask_names
from winft_lightning.data.shards import SPLITS, read_manifest


class ShardDataModule(L.LightningDataModule):
    """Loads ``<root>/manifest.json`` and its shards. ``alpha`` picks the stored AWD windows
    (mask runs only); ``on_corrupt``: ``raise`` or ``skip`` (with a warning and a count).
    ``name``, ``num_classes`` and ``source`` are config bookkeeping (checked, not needed)."""

    def __init__(
        self,
        root: str | Path | None = None,
        batch_size: int = 128,
        num_workers: int = 2,
        img_size: int = 32,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        hflip: bool = True,
        random_resized_crop: bool = False,
        rrc_scale: Sequence[float] = (0.08, 1.0),
        alpha: float | None = None,
        use_masks: bool = False,
        control: str | None = None,
        on_corrupt: str = "raise",
        shuffle_buffer: int = 2000,
        seed: int = 0,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
        name: str | None = None,
        num_classes: int | None = None,
        source: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        # stored in checkpoints (datamodule_hyper_parameters): analyze reads mean/std from there
        self.save_hyperparameters(ignore=["source"])
        if on_corrupt not in ("raise", "skip"):
            raise ValueError(f"data.on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        if use_masks and alpha is None:
            raise MaskError("use_masks=true needs an alpha (which stored AWD windows to load)")
        check_augmentations(use_masks, random_resized_crop=random_resized_crop)
        if control is not None and not use_masks:
            raise MaskError(f"data.control={control!r} needs a module that reads masks")
        if control is not None:
            check_control(control)  # refuses an unknown control, naming data.control
        self.root = Path(root).expanduser() if root else None
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.img_size = int(img_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.hflip, self.random_resized_crop = bool(hflip), bool(random_resized_crop)
        self.rrc_scale = (float(rrc_scale[0]), float(rrc_scale[1]))
        self.alpha, self.use_masks, self.control = alpha, bool(use_masks), control
        self.on_corrupt, self.shuffle_buffer, self.seed = on_corrupt, int(shuffle_buffer), int(seed)
        self.pin_memory = bool(pin_memory)
        self.expected_classes = num_classes
        self.name = name
        self._manifest: dict[str, Any] | None = None
        self.rank, self.world_size = 0, 1

    # ---- manifest-derived facts -------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The shard set's manifest (read and checked against the files on first use)."""
        if self._manifest is None:
            if self.root is None:
                raise DataError("data.root is not set: point it at a shard set (manifest.json)")
            manifest = read_manifest(self.root)
            self._validate(manifest)
            self._manifest = manifest
        return self._manifest

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def counts(self) -> dict[str, int]:
        return {s: int(e["count"]) for s, e in self.manifest["splits"].items()}

    @property
    def grid(self) -> tuple[int, int] | None:
        """The mask grid ``(h, w)`` of an analyzed set, else None."""
        teacher = self.manifest.get("teacher")
        return (int(teacher["grid"][0]), int(teacher["grid"][1])) if teacher else None

    def _validate(self, m: dict[str, Any]) -> None:
        root = m["root"]
        for split in SPLITS:
            if split not in m["splits"] or m["splits"][split]["count"] == 0:
                raise DataError(f"split {split} of {root} is empty or missing")
        if self.expected_classes is not None and int(self.expected_classes) != m["num_classes"]:
            raise DataError(
                f"data.num_classes={self.expected_classes} but {root} has {m['num_classes']} classes"
            )
        if not self.use_masks:
            return
        if not m.get("teacher"):
            raise MaskError(
                f"use_masks=true but {root} carries no masks (no 'teacher' in its manifest); "
                "run `python -m winft_lightning.analyze` and use its output directory"
            )
        self.alpha = find_alpha(self.alpha, m["alphas"], f"{root}/manifest.json")
        if self.control is not None:
            self._check_control(m)
        view = int(m["teacher"]["img_size"])
        if view != self.img_size:
            raise MaskError(
                f"data.img_size={self.img_size} but the masks in {root} were computed on the "
                f"{view}px view of teacher {m['teacher']['model_name']}; set data.img_size={view}"
            )

    def _check_control(self, m: dict[str, Any]) -> None:
        """The mask set must store ``self.control``'s members at this alpha (a set made before
        that control was stored has none: MaskError naming data.control)."""
        stored = m.get("mask_members", {}).get("controls", {}).get(self.control, {})
        names = set(stored.values()) if isinstance(stored, dict) else set()
        wanted = control_names([self.alpha], self.control)
        if self.control not in m.get("controls", []) or not set(wanted) <= names:
            made = f"mask format {m.get('mask_format', '2 or older')}"
            raise MaskError(
                f"data.control={self.control} but the mask set {m['root']} has no "
                f"{self.control} controls ({made}, made before they were stored; it has "
                f"{m.get('controls', [])}): analyze it again"
            )

    def check_geometry(self, geometry: Mapping[str, Any]) -> None:
        """Refuse (MaskError naming both) a mask set for another grid/img/patch than the model's
        ``geometry`` (``img_size``, ``patch_size``, optional ``grid``, ``teacher_sha256``)."""
        if self.use_masks:
            check_mask_geometry(self.manifest, **geometry)

    # ---- Lightning hooks ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            self.rank, self.world_size = int(trainer.global_rank), int(trainer.world_size)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            self.rank = torch.distributed.get_rank()
            self.world_size = torch.distributed.get_world_size()
        _ = self.manifest

    def train_dataloader(self) -> EpochLoader:
        return self.make_loader("train")

    def val_dataloader(self) -> EpochLoader:
        return self.make_loader("val")

    def test_dataloader(self) -> EpochLoader:
        return self.make_loader("test")

    # ---- loaders ------------------------------------------------------------------------
    def decoder(self, train: bool) -> SampleDecoder:
        return SampleDecoder(
            img_size=self.img_size,
            mean=self.mean,
            std=self.std,
            num_classes=self.num_classes,
            train=train,
            hflip=self.hflip,
            random_resized_crop=self.random_resized_crop,
            rrc_scale=self.rrc_scale,
            awd_name=mask_names(self.alpha, self.control)[0] if self.use_masks else None,
            dip_name=mask_names(1.0, self.control)[1],
            grid=self.grid if self.use_masks else None,
        )

    def _trainer_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    def num_batches(self, split: str, world_size: int, rank: int = 0) -> int:
        """Batches one rank gets per epoch: train ``ceil(count / (batch * world))``; eval the
        exact number of (possibly partial) batches its workers produce."""
        if split == "train":
            return math.ceil(self.counts["train"] / (self.batch_size * world_size))
        workers = max(self.num_workers, 1)
        counts = slot_counts(self.manifest["splits"][split]["shard_counts"], world_size * workers)
        mine = counts[rank * workers : (rank + 1) * workers]
        return sum(math.ceil(c / self.eval_batch_size) for c in mine)

    def make_loader(
        self, split: str, *, rank: int | None = None, world_size: int | None = None
    ) -> EpochLoader:
        """The loader of ``split`` for ``rank`` of ``world_size`` (default: this process)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rank = self.rank if rank is None else int(rank)
        world = self.world_size if world_size is None else int(world_size)
        entry = self.manifest["splits"][split]
        train = split == "train"
        stream = ShardStream(
            self.manifest["root"],
            entry["shards"],
            entry["shard_counts"],
            self.decoder(train),
            self.batch_size if train else self.eval_batch_size,
            train=train,
            rank=rank,
            world_size=world,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            on_corrupt=self.on_corrupt,
        )
        loader = EpochLoader(
            stream,
            epoch_fn=self._trainer_epoch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            shuffle=False,
        )
        n = self.num_batches(split, world, rank)
        if train:
            loader = loader.with_epoch(n)
        return loader.with_length(n, silent=True)
