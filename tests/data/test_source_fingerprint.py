"""An ImageFolder tree's content is part of its shards' store key: the real pipeline
(``ensure_shards`` on a composed ``data=imagefolder`` config) reuses an unchanged tree's entry
and builds a new one, saying what changed, when an image is added, removed or replaced."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from winft_lightning.data.folder_listing import describe_changes, list_folder
from winft_lightning.data.shards import iter_tar, read_manifest
from winft_lightning.data.sources import imagefolder
from winft_lightning.stages.cache import ensure_shards

CLASSES = ("a", "b")


def png(shade: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), shade, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """train: 3 images per class; val (not read by default) and test: 1 per class."""
    root = tmp_path / "tree"
    shade = 0
    for split, per_class in (("train", 3), ("val", 1), ("test", 1)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                shade += 10
                (root / split / cls / f"{split}_{i}.png").write_bytes(png(shade))
    return root


@pytest.fixture
def shards(make_cfg, tree, tmp_path, caplog):
    """``shards()``: the shard set the pipeline gives now; ``caplog`` holds its log."""
    cfg = make_cfg("data=imagefolder", f"data.source.path={tree}", "data.num_classes=2",
                   f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    caplog.set_level(logging.INFO, logger="winft_lightning")

    def run() -> Path:
        caplog.clear()
        return ensure_shards(cfg)

    return run


def images(root: Path) -> list[bytes]:
    """Every image's bytes over the set's splits."""
    m = read_manifest(root)
    return [
        members["png"]
        for e in m["splits"].values()
        for name, n in zip(e["shards"], e["shard_counts"], strict=True)
        for _, members in iter_tar(root / name, n)
    ]


def test_unchanged_tree_reuses_its_entry(shards, caplog):
    first = shards()
    assert "shards: building" in caplog.text
    assert shards() == first
    assert f"shards: reusing cached {first}" in caplog.text
    assert len(images(first)) == 8  # 6 train (1 carved as val) + 2 test; val/ is not read


def test_added_image_builds_new_shards_that_hold_it(shards, tree, caplog):
    first = shards()
    added = png(250)
    (tree / "train" / "b" / "new.png").write_bytes(added)
    second = shards()
    assert second != first and second.name.rsplit("-", 1)[0] == first.name.rsplit("-", 1)[0]
    assert f"shards: source changed since {first.name}: 1 file added under train/b" in caplog.text
    assert len(images(second)) == len(images(first)) + 1
    assert added in images(second) and added not in images(first)


def test_removed_image_builds_shards_without_it(shards, tree, caplog):
    first = shards()
    gone = tree / "train" / "a" / "train_0.png"
    old = gone.read_bytes()
    gone.unlink()
    second = shards()
    assert second != first
    assert "1 file removed under train/a" in caplog.text
    assert len(images(second)) == len(images(first)) - 1
    assert old in images(first) and old not in images(second)


def test_replaced_bytes_build_shards_with_the_new_bytes(shards, tree, caplog):
    first = shards()
    target = tree / "test" / "b" / "test_0.png"
    old, new = target.read_bytes(), png(33, size=12)
    assert len(new) != len(old)
    target.write_bytes(new)
    later = os.stat(target).st_mtime_ns + 10**9  # a coarse-clock filesystem still sees it
    os.utime(target, ns=(later, later))
    second = shards()
    assert second != first
    assert "1 file replaced under test/b" in caplog.text
    assert new in images(second) and old not in images(second)
    assert shards() == second and "reusing cached" in caplog.text


def test_log_names_the_split_dirs_used_and_not(shards, tree, caplog):
    shards()
    line = (
        f"imagefolder {tree}: using train/ (train, carved val) and test/ (test); "
        "not using val/ (data.source.splits.val is null)"
    )
    assert line in caplog.text


def test_listing_reads_what_the_source_reads(tree):
    (tree / "train" / "a" / "notes.txt").write_text("not an image")
    (tree / "train" / "a" / "deep").mkdir()
    (tree / "train" / "a" / "deep" / "x.JPG").write_bytes(b"jpeg")
    splits = {"train": "train", "val": None}
    listing = list_folder({"path": str(tree), "splits": splits})
    read = imagefolder(str(tree), splits, verify=False).splits["train"]
    files = [r.split("\t")[0] for r in listing.files()]
    assert sorted(files) == sorted(str(Path(it.origin).relative_to(tree)) for it in read)
    assert "train/a/deep/x.JPG" in files and len(files) == 7
    assert listing.summary()["per_split_dir"] == {"train": 7}
    assert "not using test/ (not named in data.source.splits)" in listing.dirs.note()


def test_describe_changes_counts_per_dir_and_names_class_dirs():
    old = ["train/a/\t-\t-", "train/a/1.png\t5\t1", "train/a/2.png\t5\t1"]
    new = ["train/a/\t-\t-", "train/a/2.png\t6\t1", "train/c/\t-\t-", *(
        f"train/c/{i}.png\t5\t1" for i in range(4))]  # fmt: skip
    assert describe_changes(old, new) == (
        "class dir train/c/ added, 1 file removed under train/a, "
        "1 file replaced under train/a, 4 files added under train/c"
    )
    assert describe_changes(old, old) == "no file changed"
