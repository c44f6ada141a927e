"""The sample stream over a split's shards: slotting across ranks and workers, strict reading,
shuffling, decoding to tensors, batching. Built from WebDataset stages (``DataPipeline``,
``shuffle``, ``map``, ``batched``) and read by a ``wds.WebLoader``.

Slots: worker ``w`` of rank ``r`` is slot ``r * W + w`` of ``S = world * W``. With at least S
shards a slot reads shards ``s, s + S, ...``; with fewer it reads every shard and keeps samples
whose index in the pass is ``s`` mod S. Either way the slots of one pass are disjoint and cover
the split. Training passes are endless, each with its own shard order (the same on every rank,
seeded by seed, epoch and pass), so ``with_epoch`` can give every rank the same batch count.
"""

from __future__ import annotations

import io
import logging
import math
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from winft_lightning.data.errors import DataError, ShardError
from winft_lightning.data.geometry import hflip_dip_order, hflip_windows
from winft_lightning.data.masks import DIP, check_order, check_windows, decode_mask, find_member
from winft_lightning.data.shards import IMAGE_EXTS, check_crc, iter_tar

log = logging.getLogger(__name__)


class CorruptPolicy:
    """``raise``: a corrupt sample or shard stops the run with its :class:`ShardError`.
    ``skip``: it is skipped with a warning that carries the running count (per process)."""

    def __init__(self, mode: str = "raise"):
        if mode not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped = 0

    def __call__(self, exc: BaseException, lost: int = 1) -> bool:
        """wds handler protocol: True = continue. Non-data errors always propagate."""
        if self.mode == "raise" or not isinstance(exc, ShardError):
            raise exc
        self.skipped += lost
        msg = f"skipped {lost} sample(s): {exc} ({self.skipped} skipped so far in this worker)"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return True


def slot_info(rank: int, world: int) -> tuple[int, int]:
    """(slot, number of slots) of the calling DataLoader worker."""
    info = torch.utils.data.get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    return rank * workers + worker, world * workers


def slot_counts(counts: Sequence[int], nslots: int) -> list[int]:
    """Samples each slot gets in one (unshuffled) pass over shards with ``counts``."""
    if len(counts) >= nslots:
        return [sum(counts[s::nslots]) for s in range(nslots)]
    total = sum(counts)
    return [len(range(s, total, nslots)) for s in range(nslots)]


def analyzed_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """The analyzed (eval) view of an image, the one the masks are made on: ``[3, H, W]``
    uint8 -> ``[3, size, size]``, shorter side resized to ``size`` (bilinear, antialiased),
    centre crop. :class:`SampleDecoder` (eval) and ``visualize`` both use it."""
    if min(img.shape[-2:]) != size:
        img = TF.resize(img, size, antialias=True)
    if tuple(img.shape[-2:]) != (size, size):
        img = TF.center_crop(img, [size, size])
    return img


@dataclass
class SampleDecoder:
    """Raw members -> ``{"image" [3,H,W] float, "label", "key", ("windows" [N,4], "dip_order"
    [N] long)}``. Eval view: resize the shorter side to ``img_size``, centre crop. Train: an
    optional mask-aware hflip and (mask-free runs only) random resized crop."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    train: bool = False
    hflip: bool = False
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    awd_name: str | None = None
    grid: tuple[int, int] | None = None
    dip_name: str = DIP  # or a control's order (``masks.mask_names``)

    def _image(self, shard: str, key: str, members: dict, rng: random.Random) -> torch.Tensor:
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext is None:
            raise ShardError(shard, f"no image member (has {sorted(members)})", key)
        try:
            with Image.open(io.BytesIO(members[ext])) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # PIL raises many types on bad bytes
            raise ShardError(shard, f"{ext} bytes are not a decodable image ({e})", key) from e
        img = torch.from_numpy(arr.copy()).permute(2, 0, 1)  # [3, H, W] uint8
        size = self.img_size
        if self.train and self.random_resized_crop:
            top, left, h, w = _rrc_params(img.shape[-2:], self.rrc_scale, rng)
            return TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        return analyzed_view(img, size)

    def _label(self, shard: str, key: str, members: dict) -> int:
        raw = members.get("cls")
        if raw is None:
            raise ShardError(shard, "no 'cls' member", key)
        try:
            label = int(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError) as e:
            raise ShardError(shard, f"cls {raw[:20]!r} is not an integer", key) from e
        if not 0 <= label < self.num_classes:
            raise ShardError(shard, f"label {label} out of range [0, {self.num_classes})", key)
        return label

    def _masks(self, shard: str, key: str, members: dict) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.grid
        n = h * w
        out = []
        for name, shape, check in (
            (self.awd_name, (n, 4), lambda a: check_windows(a, self.grid)),
            (self.dip_name, (n,), lambda a: check_order(a, n)),
        ):
            found = find_member(members, name)
            if found is None:
                raise ShardError(
                    shard, f"mask member {name}.* missing (has {sorted(members)})", key
                )
            member, enc = found
            try:
                arr = decode_mask(members[member], enc, shape)
                check(arr)
            except Exception as e:  # zlib/numpy errors on damaged bytes, failed checks
                raise ShardError(shard, f"{member}: {e}", key) from e
            out.append(torch.from_numpy(arr.astype(np.int64)))
        return out[0], out[1]

    def __call__(self, sample: dict) -> dict:
        shard, key = sample["__shard__"], sample["__key__"]
        members = sample["members"]
        rng = random.Random(sample["__seed__"])
        img = self._image(shard, key, members, rng)
        out: dict[str, Any] = {"key": key, "label": self._label(shard, key, members)}
        flip = self.train and self.hflip and rng.random() < 0.5
        if flip:
            img = TF.horizontal_flip(img)
        if self.awd_name is not None:
            windows, order = self._masks(shard, key, members)
            if flip:
                windows, order = (
                    hflip_windows(windows, self.grid),
                    hflip_dip_order(order, self.grid),
                )
            out["windows"], out["dip_order"] = windows, order
        x = img.to(torch.float32).div_(255.0)
        out["image"] = TF.normalize(x, list(self.mean), list(self.std))
        return out


def _rrc_params(
    hw: Sequence[int], scale: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """RandomResizedCrop box (ratio 3/4..4/3) drawn from ``rng``, not torch's global RNG."""
    height, width = int(hw[0]), int(hw[1])
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def collate(samples: list[dict]) -> dict[str, Any]:
    """List of decoded samples -> the batch dict of docs/INTERFACES.md."""
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "key": [s["key"] for s in samples],
    }
    if "windows" in samples[0]:
        batch["windows"] = torch.stack([s["windows"] for s in samples])
        batch["dip_order"] = torch.stack([s["dip_order"] for s in samples])
    return batch


class ShardStream(wds.DataPipeline):
    """One split as a stream of batches for one rank (see the module docstring for slotting).

    ``train``: endless shuffled passes, full batches only; else one ordered pass, the last batch
    of each worker may be partial. ``epoch`` is bumped by :class:`EpochLoader` each epoch."""

    def __init__(
        self,
        root: str | Path,
        shards: Sequence[str],
        counts: Sequence[int],
        decoder: SampleDecoder,
        batch_size: int,
        *,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        on_corrupt: str = "raise",
    ):
        self.root = Path(root)
        self.shards, self.counts = list(shards), [int(c) for c in counts]
        self.train, self.rank, self.world = train, int(rank), int(world_size)
        self.seed, self.shuffle_buffer = int(seed), int(shuffle_buffer)
        self.epoch = 0
        self.policy = CorruptPolicy(on_corrupt)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        super().__init__(
            self._shard_plan,
            self._read,
            self._shuffle,
            wds.map(decoder, handler=self.policy),
            wds.batched(batch_size, collation_fn=collate, partial=not train),
        )

    def _shard_plan(self) -> Iterator[dict]:
        """Dicts ``{path, count, keep: (slot, nslots) | None, offset, seed}`` for this slot."""
        slot, nslots = slot_info(self.rank, self.world)
        n = len(self.shards)
        passes = range(1 << 62) if self.train else range(1)
        for p in passes:
            order = list(range(n))
            if self.train:
                random.Random(f"{self.seed}/{self.epoch}/{p}").shuffle(order)
            by_shard = n >= nslots
            mine = order[slot::nslots] if by_shard else order
            offsets = np.cumsum([0] + [self.counts[i] for i in order])
            for j, i in enumerate(order):
                if by_shard and i not in mine:
                    continue
                yield {
                    "path": self.root / self.shards[i],
                    "count": self.counts[i],
                    "keep": None if by_shard else (slot, nslots),
                    "offset": int(offsets[j]),
                    "seed": f"{self.seed}/{self.epoch}/{p}/{i}",
                    "pass": p,
                }

    def _read(self, plan: Iterator[dict]) -> Iterator[dict]:
        """Strictly read each planned shard; CRC-check samples; keep this slot's samples."""
        current_pass, got = 0, 0
        for item in plan:
            if item["pass"] != current_pass:
                if got == 0:
                    raise DataError(
                        f"no readable samples for worker slot of rank {self.rank} in a whole "
                        f"pass over {self.root} ({len(self.shards)} shards; "
                        f"{self.policy.skipped} skipped as corrupt)"
                    )
                current_pass, got = item["pass"], 0
            shard, keep, seen = str(item["path"]), item["keep"], 0
            try:
                for pos, (key, members) in enumerate(iter_tar(item["path"], item["count"])):
                    seen = pos + 1
                    if keep is not None and (item["offset"] + pos) % keep[1] != keep[0]:
                        continue
                    try:
                        check_crc(shard, key, members)
                    except ShardError as e:
                        self.policy(e)
                        continue
                    got += 1
                    seed = f"{item['seed']}/{pos}"
                    yield {
                        "__key__": key,
                        "__shard__": shard,
                        "__seed__": seed,
                        "__pass__": item["pass"],
                        "members": members,
                    }
            except ShardError as e:
                rest = range(item["offset"] + seen, item["offset"] + item["count"])
                lost = len(rest) if keep is None else sum(g % keep[1] == keep[0] for g in rest)
                self.policy(e, lost=lost)

    def _shuffle(self, samples: Iterator[dict]) -> Iterator[dict]:
        """Buffer shuffle that never mixes two passes, so a pass stays disjoint across slots."""
        if not self.train or self.shuffle_buffer < 2:
            yield from samples
            return
        slot = slot_info(self.rank, self.world)[0]
        rng = random.Random(f"{self.seed}/{self.epoch}/shuffle/{slot}")
        buf: list[dict] = []
        current = None
        for sample in samples:
            if sample["__pass__"] != current:
                rng.shuffle(buf)
                yield from buf
                buf, current = [], sample["__pass__"]
            buf.append(sample)
            if len(buf) >= self.shuffle_buffer:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf


class EpochLoader(wds.WebLoader):
    """``wds.WebLoader`` that sets its :class:`ShardStream`'s epoch before every iteration, so
    each epoch draws new shard orders, shuffles and flips (workers are fresh each epoch).

    ``epoch_fn`` gives the epoch (the Trainer's ``current_epoch``, so a run resumed at epoch e
    draws exactly what an uninterrupted run draws at epoch e); it returns None outside a
    Trainer, and then the loader counts its own iterations."""

    def __init__(
        self, stream: ShardStream, epoch_fn: Callable[[], int | None] | None = None, **kw: Any
    ):
        super().__init__(stream, batch_size=None, **kw)
        self.stream = stream
        self.epoch_fn = epoch_fn

    def __iter__(self) -> Iterator[dict]:
        return self._epoch_iter()

    def _epoch_iter(self) -> Iterator[dict]:
        # Lazy on purpose: Lightning creates the first epoch's iterator before it restores the
        # loop's epoch from a checkpoint; the epoch read at the first batch is the right one.
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        self.stream.epoch = self.stream.epoch + 1 if epoch is None else int(epoch)
        yield from super().__iter__()
