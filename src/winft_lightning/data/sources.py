"""Labelled image sources for ``prepare``: Fashion-MNIST (Debian package), scikit-learn digits,
and an ImageFolder tree (``root/split/class_x/img.jpg``).

A source yields, per split, a list of :class:`Item` whose ``load()`` returns ``(ext, bytes)``:
the image bytes exactly as stored (ImageFolder) or PNG-encoded uint8 grayscale (the packaged
arrays). Items are cheap until loaded, so a resumed prepare skips finished ones for free.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from winft_lightning.data.errors import SourceError
from winft_lightning.data.shards import SPLITS

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FOLDER_EXTS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".bmp": "bmp"}
DEFAULT_FOLDER_SPLITS = {"train": "train", "val": "val", "test": "test"}


@dataclass(frozen=True)
class Item:
    """One labelled image; ``load() -> (ext, image bytes)``."""

    label: int
    load: Callable[[], tuple[str, bytes]]
    origin: str = ""


@dataclass
class SourceData:
    classes: list[str]
    splits: dict[str, list[Item]]


def png_bytes(gray: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` -> PNG bytes (mode L), deterministic."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def _array_items(images: np.ndarray, labels: np.ndarray) -> list[Item]:
    return [
        Item(int(y), (lambda i=i: ("png", png_bytes(images[i]))), f"#{i}")
        for i, y in enumerate(labels)
    ]


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file (the MNIST format) into a uint8 array."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise SourceError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise SourceError(f"{path} is not a uint8 IDX file (magic {raw[:4]!r})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise SourceError(f"{path}: header says shape {shape}, file has {data.size} values")
    return data.reshape(shape)


def fashion_mnist(path: str = FASHION_MNIST_DIR, **_: Any) -> SourceData:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (60k train, 10k test, 28x28)."""
    root = Path(path)
    splits = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        img_f = root / f"{stem}-images-idx3-ubyte.gz"
        lab_f = root / f"{stem}-labels-idx1-ubyte.gz"
        for f in (img_f, lab_f):
            if not f.is_file():
                raise SourceError(
                    f"Fashion-MNIST file {f} not found: install the Debian package "
                    "dataset-fashion-mnist (`make data`, or `sudo apt-get install "
                    "dataset-fashion-mnist`), or point data.source.path at the idx files"
                )
        images, labels = read_idx(img_f), read_idx(lab_f)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise SourceError(f"{img_f}: images {images.shape} do not match labels {labels.shape}")
        splits[split] = _array_items(images, labels)
    return SourceData(list(FASHION_MNIST_CLASSES), splits)


def digits(**_: Any) -> SourceData:
    """scikit-learn's 8x8 digits (1797 images, 0..16 scaled to 0..255), all as ``train``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SourceError(
            "data source 'digits' needs scikit-learn (pip install scikit-learn)"
        ) from e
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    return SourceData([str(c) for c in d.target_names], {"train": _array_items(images, d.target)})


def _file_item(path: Path, label: int) -> Item:
    ext = FOLDER_EXTS[path.suffix.lower()]
    return Item(label, lambda: (ext, path.read_bytes()), str(path))


def imagefolder(
    path: str | None = None,
    splits: Mapping[str, str | None] | None = None,
    verify: bool = True,
    **_: Any,
) -> SourceData:
    """``path/<dir>/<class>/<image>``; ``splits`` maps our split -> its directory (null: none,
    e.g. ``val`` carved from train). Classes are train's class directories, sorted."""
    if not path:
        raise SourceError("data.source.path must name the ImageFolder root (root/split/class/img)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SourceError(f"ImageFolder root {root} (data.source.path) is not a directory")
    splits = dict(splits or DEFAULT_FOLDER_SPLITS)
    if not splits.get("train"):
        raise SourceError("data.source.splits.train must name the training directory")
    train_dir = root / splits["train"]
    if not train_dir.is_dir():
        raise SourceError(f"ImageFolder train directory {train_dir} does not exist")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise SourceError(f"{train_dir} has no class directories (expected {train_dir}/CLASS/img)")
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, list[Item]] = {}
    for split, sub in splits.items():
        if not sub:
            continue
        d = root / sub
        if not d.is_dir():
            if split == "train":
                raise SourceError(f"ImageFolder split directory {d} does not exist")
            continue
        items = []
        for cdir in sorted(x for x in d.iterdir() if x.is_dir()):
            if cdir.name not in index:
                raise SourceError(f"class directory {cdir} is not a class of {train_dir}")
            for f in sorted(cdir.rglob("*")):
                if f.is_file() and f.suffix.lower() in FOLDER_EXTS:
                    if verify:
                        _verify_image(f)
                    items.append(_file_item(f, index[cdir.name]))
        out[split] = items
    return SourceData(classes, out)


def _verify_image(f: Path) -> None:
    try:
        with Image.open(f) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for bad files
        raise SourceError(f"{f} is not a readable image ({type(e).__name__}: {e})") from e


SOURCES: dict[str, Callable[..., SourceData]] = {
    "fashion_mnist": fashion_mnist,
    "digits": digits,
    "imagefolder": imagefolder,
}


def _subset(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.permutation(n)[:k])


def load_source(cfg: Mapping[str, Any]) -> SourceData:
    """Build the splits ``train``, ``val``, ``test`` from a source config.

    Keys: ``name`` (fashion_mnist | digits | imagefolder) plus its options; ``val_fraction``
    or ``val_count`` (carved deterministically from train, with ``seed``, when the source has
    no val); ``test_fraction``/``test_count`` (likewise for a source without test, e.g.
    digits); ``limit`` (an int for every split, or ``{split: int | null}``: at most that many
    samples, a seeded random subset, for quick runs)."""
    name = cfg.get("name")
    if name not in SOURCES:
        raise SourceError(f"data.source.name={name!r} is not one of {sorted(SOURCES)}")
    data = SOURCES[name](**{k: v for k, v in cfg.items() if k != "name"})
    seed = int(cfg.get("seed", 0))
    rng = np.random.default_rng(seed)
    train = data.splits["train"]
    for split, frac_key in (("test", "test_fraction"), ("val", "val_fraction")):
        if data.splits.get(split):
            continue
        count = cfg.get(f"{split}_count")
        frac = float(cfg.get(frac_key) or 0.0)
        if count is None and not 0.0 < frac < 1.0:
            raise SourceError(
                f"source {name} has no {split} split; set data.source.{frac_key} in (0, 1) "
                f"or data.source.{split}_count to carve one from train (got {frac_key}="
                f"{cfg.get(frac_key)})"
            )
        k = int(count) if count is not None else max(1, round(frac * len(train)))
        if not 0 < k < len(train):
            raise SourceError(
                f"carving {k} {split} samples from {len(train)} training samples of {name} "
                f"leaves none on one side ({frac_key}={cfg.get(frac_key)}, "
                f"{split}_count={count})"
            )
        carved = set(_subset(len(train), k, rng).tolist())
        data.splits[split] = [it for i, it in enumerate(train) if i in carved]
        train = [it for i, it in enumerate(train) if i not in carved]
    data.splits["train"] = train
    limits = cfg.get("limit")
    for split in SPLITS:
        items = data.splits.get(split, [])
        limit = limits.get(split) if isinstance(limits, Mapping) else limits
        if limit is not None and len(items) > int(limit):
            rng = np.random.default_rng([seed, SPLITS.index(split)])
            items = [items[i] for i in _subset(len(items), int(limit), rng)]
        data.splits[split] = items
        if not items:
            raise SourceError(
                f"split {split} of source {name} is empty (data.source.limit.{split}={limit})"
            )
    return data
