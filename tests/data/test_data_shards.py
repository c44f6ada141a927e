"""Sources -> shards -> read back: the same images and labels as the source, exactly."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from sklearn.datasets import load_digits

from helpers import DIGITS, decode_png, digits_source
from winft_lightning.data.errors import DataError, ShardError, SourceError
from winft_lightning.data.shards import iter_tar, read_manifest
from winft_lightning.data.sources import FASHION_MNIST_DIR, load_source, read_idx
from winft_lightning.stages.prepare import prepare_shards


def read_split(root: Path, split: str) -> list[tuple[str, dict]]:
    m = read_manifest(root)
    e = m["splits"][split]
    out = []
    for name, n in zip(e["shards"], e["shard_counts"], strict=True):
        out.extend(iter_tar(root / name, n))
    return out


def test_digits_round_trip_pixel_exact(digits_shards):
    m = read_manifest(digits_shards)
    assert m["format_version"] == 1 and m["kind"] == "images"
    assert m["classes"] == [str(i) for i in range(10)] and m["num_classes"] == 10
    assert {s: e["count"] for s, e in m["splits"].items()} == {"train": 200, "val": 40, "test": 60}
    assert m["splits"]["train"]["shards"] == [f"train-{i:06d}.tar" for i in range(8)]
    assert m["source"]["name"] == "digits" and m["code_version"]

    # the same selection, computed from scikit-learn directly
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    source = load_source(DIGITS)
    for split in ("train", "val", "test"):
        samples = read_split(digits_shards, split)
        items = source.splits[split]
        assert len(samples) == len(items) == m["splits"][split]["count"]
        for (key, members), item in zip(samples, items, strict=True):
            i = int(item.origin[1:])
            assert set(members) == {"png", "cls", "crc"}
            np.testing.assert_array_equal(decode_png(members["png"]), images[i])
            assert int(members["cls"]) == d.target[i] == item.label
            assert key.startswith(split + "_")


def test_val_and_test_are_carved_deterministically_and_disjoint():
    a, b = load_source(digits_source(limit=None)), load_source(digits_source(limit=None))
    origins = {s: [it.origin for it in a.splits[s]] for s in ("train", "val", "test")}
    assert origins == {s: [it.origin for it in b.splits[s]] for s in ("train", "val", "test")}
    sets = [set(v) for v in origins.values()]
    assert sum(map(len, sets)) == 1797 == len(set.union(*sets))
    assert len(origins["val"]) == round(0.1 * (1797 - round(0.2 * 1797)))
    other = load_source(digits_source(limit=None, seed=1))
    assert [it.origin for it in other.splits["val"]] != origins["val"]


def test_limit_int_or_per_split():
    s = load_source(digits_source(limit=30))
    assert [len(s.splits[k]) for k in ("train", "val", "test")] == [30, 30, 30]
    s = load_source(digits_source(limit={"train": 12, "val": None, "test": 5}))
    assert [len(s.splits[k]) for k in ("train", "val", "test")] == [12, 144, 5]


def _write_tree(root: Path) -> dict[str, bytes]:
    """A real ImageFolder tree: JPEG and PNG photos from scikit-image, 3 classes."""
    pics = {
        "astronaut": skdata.astronaut(),
        "coffee": skdata.coffee(),
        "chelsea": skdata.chelsea(),
        "camera": skdata.camera(),
        "rocket": skdata.rocket(),
        "coins": skdata.coins(),
    }
    written = {}
    layout = [
        ("train", "cat", "chelsea", "jpg"),
        ("train", "cat", "coffee", "png"),
        ("train", "dog", "astronaut", "jpeg"),
        ("train", "dog", "camera", "png"),
        ("train", "zebra", "rocket", "jpg"),
        ("train", "zebra", "coins", "jpg"),
        ("test", "cat", "astronaut", "png"),
        ("test", "zebra", "camera", "jpg"),
    ]
    for i, (split, cls, pic, ext) in enumerate(layout):
        f = root / split / cls / f"{pic}_{i}.{ext}"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pics[pic]).resize((40, 30)).save(f, "JPEG" if ext != "png" else "PNG")
        written[f"{split}/{cls}/{f.name}"] = f.read_bytes()
    return written


def test_imagefolder_bytes_kept_exactly(tmp_path):
    written = _write_tree(tmp_path / "tree")
    src = {
        "name": "imagefolder",
        "path": str(tmp_path / "tree"),
        "splits": {"train": "train", "val": None, "test": "test"},
        "val_count": 2,
        "seed": 0,
        "maxcount": 3,
    }
    m = prepare_shards(src, tmp_path / "out", progress=False)
    assert m["classes"] == ["cat", "dog", "zebra"]
    assert {s: e["count"] for s, e in m["splits"].items()} == {"train": 4, "val": 2, "test": 2}
    source = load_source(src)
    seen = set()
    for split in ("train", "val", "test"):
        for (_, members), item in zip(
            read_split(tmp_path / "out", split), source.splits[split], strict=True
        ):
            rel = str(Path(item.origin).relative_to(tmp_path / "tree"))
            ext = "png" if rel.endswith(".png") else "jpg"
            assert members[ext] == written[rel]  # byte-exact: JPEG stays JPEG, PNG stays PNG
            assert int(members["cls"]) == m["classes"].index(rel.split("/")[1])
            seen.add(rel)
    assert seen == set(written)


def test_imagefolder_bad_inputs(tmp_path):
    _write_tree(tmp_path / "tree")
    src = {"name": "imagefolder", "path": str(tmp_path / "tree"), "val_count": 1}
    (tmp_path / "tree/test/cat/broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(SourceError, match=r"broken\.jpg"):
        load_source(src)
    (tmp_path / "tree/test/cat/broken.jpg").unlink()
    (tmp_path / "tree/test/horse").mkdir()
    with pytest.raises(SourceError, match="horse"):
        load_source(src)
    with pytest.raises(SourceError, match="nowhere"):
        load_source({**src, "path": str(tmp_path / "nowhere")})


def test_missing_fashion_mnist_package_names_it(tmp_path):
    with pytest.raises(SourceError, match="dataset-fashion-mnist") as e:
        load_source({"name": "fashion_mnist", "path": str(tmp_path), "val_count": 10})
    assert str(tmp_path) in str(e.value)
    with pytest.raises(SourceError, match="not one of"):
        load_source({"name": "mnist_typo"})


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian dataset-fashion-mnist not installed",
)
def test_fashion_mnist_subset_pixel_exact(tmp_path):
    src = {
        "name": "fashion_mnist",
        "path": FASHION_MNIST_DIR,
        "val_count": 5000,
        "limit": {"train": 30, "val": 10, "test": 20},
        "maxcount": 16,
    }
    m = prepare_shards(src, tmp_path, progress=False)
    assert m["classes"][0] == "T-shirt/top" and m["num_classes"] == 10
    images = read_idx(Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(Path(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    items = load_source(src).splits["test"]
    for (_, members), item in zip(read_split(tmp_path, "test"), items, strict=True):
        i = int(item.origin[1:])
        np.testing.assert_array_equal(decode_png(members["png"]), images[i])
        assert int(members["cls"]) == labels[i]


def test_empty_split_and_config_errors(tmp_path):
    with pytest.raises(SourceError, match=r"limit\.val"):
        load_source(digits_source(limit={"train": 5, "val": 0, "test": 5}))
    with pytest.raises(SourceError, match="test_fraction"):
        load_source(digits_source(test_fraction=None))
    prepare_shards(digits_source(limit=10), tmp_path, progress=False)
    with pytest.raises(DataError, match="another source config"):
        prepare_shards(digits_source(limit=11), tmp_path, progress=False)
    m = prepare_shards(digits_source(limit=11), tmp_path, progress=False, overwrite=True)
    assert m["splits"]["val"]["count"] == 11
    assert json.loads((tmp_path / "manifest.json").read_text())["source"]["limit"] == 11


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("symlink", r"of type b'2': not a regular file"),
        ("pax", r"of type b'x': not a regular file"),
        ("checksum", r"header checksum mismatch"),
    ],
)
def test_shard_reader_refuses_what_our_writer_never_writes(tmp_path, kind, message):
    path = tmp_path / "odd-000000.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("s_0.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"3"))
        info = tarfile.TarInfo("s_0.png" if kind != "pax" else "s_0.pñg")  # non-ASCII: pax
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "s_0.cls"
        tar.addfile(info, io.BytesIO(b""))
    if kind == "checksum":
        raw = bytearray(path.read_bytes())
        raw[2 * 512 + 10] ^= 1  # the second header (after the first header and its data)
        path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=rf"odd-000000\.tar.*{message}"):
        list(iter_tar(path))
