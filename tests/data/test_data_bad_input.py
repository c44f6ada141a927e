"""Bad input never becomes a silent wrong batch: a clear error naming the shard and key, or
(on_corrupt=skip) a warning with a count. Includes a fuzz test over corrupted shards."""

from __future__ import annotations

import json
import random
import shutil
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.data.errors import DataError, ManifestError, ShardError
from winft_lightning.data.loading import SampleDecoder, ShardStream
from winft_lightning.data.masks import encode_mask
from winft_lightning.data.shards import MANIFEST, iter_tar, members_crc

ARGS = dict(batch_size=10, num_workers=0, img_size=16, mean=(0.3,) * 3, std=(0.4,) * 3)


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analyzed"))
    return dst


def rewrite(root: Path, name: str, edit, fix_crc: bool = True) -> None:
    """Rewrite shard ``name`` with ``edit(key, members) -> members | None`` (None drops the
    sample); recompute each CRC unless ``fix_crc``; keep the manifest in step (size, count)."""
    samples = list(iter_tar(root / name))
    path = root / name
    n = 0
    with open(path, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as tw:
        for key, members in samples:
            new = edit(key, dict(members))
            if new is None:
                continue
            if fix_crc:
                new["crc"] = members_crc(key, new).encode()
            tw.write({"__key__": key, **new})
            n += 1
    m = json.loads((root / MANIFEST).read_text())
    for e in m["splits"].values():
        if name in e["shards"]:
            i = e["shards"].index(name)
            e["count"] += n - e["shard_counts"][i]
            e["shard_counts"][i], e["shard_bytes"][i] = n, path.stat().st_size
    (root / MANIFEST).write_text(json.dumps(m))


def first_key(root: Path, name: str) -> str:
    return next(iter_tar(root / name))[0]


def run_split(root: Path, split: str, **kw) -> list[dict]:
    m = ShardDataModule(root, **(ARGS | kw))
    m.setup()
    return list(m.make_loader(split))


def n_samples(batches) -> int:
    return sum(len(b["key"]) for b in batches)


def test_truncated_tar(digits_shards, tmp_path):
    root = copy_set(digits_shards, tmp_path / "s")
    f = root / "val-000001.tar"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ManifestError, match=r"val-000001\.tar is \d+ bytes, .* says"):
        run_split(root, "val")
    # the same cut with a manifest that agrees on the size: the tar reader must notice
    rewrite(root, "val-000000.tar", lambda k, m: m)  # manifest rewritten in step
    m = json.loads((root / MANIFEST).read_text())
    m["splits"]["val"]["shard_bytes"][1] = f.stat().st_size
    (root / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"val-000001\.tar.*(unreadable tar|holds \d+ samples)"):
        run_split(root, "val")
    with pytest.warns(RuntimeWarning, match=r"skipped \d+ sample.*val-000001\.tar"):
        got = run_split(root, "val", on_corrupt="skip")
    assert 25 <= n_samples(got) < 40


def test_cut_at_member_boundary_is_caught_by_count(digits_shards, tmp_path):
    """A tar cut exactly between members reads as a shorter, valid archive: only the count
    recorded in the manifest shows that samples are missing."""
    root = copy_set(digits_shards, tmp_path / "s")
    f = root / "test-000002.tar"
    with tarfile.open(f) as t:
        infos = t.getmembers()
    assert len(infos) == 30  # 10 samples x (cls, crc, png)
    f.write_bytes(f.read_bytes()[: infos[-9].offset])  # drop the last 3 samples
    m = json.loads((root / MANIFEST).read_text())
    m["splits"]["test"]["shard_bytes"][2] = f.stat().st_size
    (root / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(
        ShardError,
        match=r"test-000002\.tar, sample 'test_\d+': holds 7 samples, the manifest says 10",
    ):
        run_split(root, "test")
    with pytest.warns(RuntimeWarning, match=r"skipped 4 sample"):  # the last one read, too
        assert n_samples(run_split(root, "test", on_corrupt="skip")) == 56


def test_flipped_byte_in_image(digits_shards, tmp_path):
    root = copy_set(digits_shards, tmp_path / "s")
    key = first_key(root, "val-000000.tar")

    def flip(k, m):
        if k == key:
            png = bytearray(m["png"])
            png[len(png) // 2] ^= 0x10
            m["png"] = bytes(png)
        return m

    rewrite(root, "val-000000.tar", flip, fix_crc=False)
    with pytest.raises(ShardError, match=rf"val-000000\.tar, sample '{key}': CRC mismatch"):
        run_split(root, "val")
    with pytest.warns(RuntimeWarning, match=r"skipped 1 sample.*\(1 skipped so far"):
        got = run_split(root, "val", on_corrupt="skip")
    assert n_samples(got) == 39 and key not in {k for b in got for k in b["key"]}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m | {"cls": b"12"}, r"label 12 out of range \[0, 10\)"),
        (lambda m: m | {"cls": b"cat"}, r"cls b'cat' is not an integer"),
        (lambda m: {k: v for k, v in m.items() if k != "cls"}, r"no 'cls' member"),
        (lambda m: m | {"png": b"this is not a png"}, r"png bytes are not a decodable image"),
        (lambda m: {k: v for k, v in m.items() if k != "png"}, r"no image member"),
    ],
)
def test_bad_label_or_image(digits_shards, tmp_path, edit, message):
    root = copy_set(digits_shards, tmp_path / "s")
    key = first_key(root, "test-000001.tar")
    rewrite(root, "test-000001.tar", lambda k, m: edit(m) if k == key else m)
    with pytest.raises(ShardError, match=rf"test-000001\.tar, sample '{key}': {message}"):
        run_split(root, "test")
    with pytest.warns(RuntimeWarning, match="skipped 1 sample"):
        assert n_samples(run_split(root, "test", on_corrupt="skip")) == 59


def _n4(rows: int) -> np.ndarray:
    return np.zeros((rows, 4), dtype=np.int16)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: {k: v for k, v in m.items() if k != "awd.a0100.i16z"},
            r"mask member awd\.a0100\.\* missing",
        ),
        (
            lambda m: {k: v for k, v in m.items() if k != "dip_order.i16z"},
            r"mask member dip_order\.\* missing",
        ),
        (
            lambda m: m | {"awd.a0100.i16z": encode_mask(_n4(15))},
            r"awd\.a0100\.i16z: .*expected \(16, 4\)",
        ),
        (
            lambda m: (
                {k: v for k, v in m.items() if k != "awd.a0100.i16z"}
                | {"awd.a0100.npy": encode_mask(np.zeros((16, 3)), "npy")}
            ),
            r"awd\.a0100\.npy: shape \(16, 3\), expected \(16, 4\)",
        ),
        (
            lambda m: m | {"awd.a0100.i16z": encode_mask(_n4(16))},
            r"awd\.a0100\.i16z: window of patch 1 \[0, 0, 0, 0\] is not a box",
        ),
        (
            lambda m: m | {"dip_order.i16z": encode_mask(np.zeros(16))},
            r"dip_order\.i16z: is not a permutation",
        ),
        (lambda m: m | {"dip_order.i16z": b"garbage"}, r"dip_order\.i16z: .*"),
    ],
)
def test_bad_masks(analyzed_shards, tmp_path, edit, message):
    root = copy_set(analyzed_shards, tmp_path / "m")
    key = first_key(root, "val-000001.tar")
    rewrite(root, "val-000001.tar", lambda k, m: edit(m) if k == key else m)
    with pytest.raises(ShardError, match=rf"val-000001\.tar, sample '{key}': {message}"):
        run_split(root, "val", use_masks=True, alpha=0.1, mean=(0.3053,) * 3, std=(0.3759,) * 3)
    with pytest.warns(RuntimeWarning, match="skipped 1 sample"):
        got = run_split(root, "val", use_masks=True, alpha=0.1, on_corrupt="skip")
    assert n_samples(got) == 39
    # the run without masks does not need them
    assert n_samples(run_split(root, "val")) == 40


def test_empty_split_in_manifest(digits_shards, tmp_path):
    root = copy_set(digits_shards, tmp_path / "s")
    m = json.loads((root / MANIFEST).read_text())
    m["splits"]["val"] = {"count": 0, "shards": [], "shard_counts": [], "shard_bytes": []}
    (root / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"split val of .* is empty"):
        run_split(root, "train")
    (root / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        run_split(root, "train")
    (root / "train-000003.tar").unlink()
    (root / MANIFEST).write_text(json.dumps(json.loads((digits_shards / MANIFEST).read_text())))
    with pytest.raises(ManifestError, match=r"train-000003\.tar of split train .* is missing"):
        run_split(root, "train")


# ---- fuzz ------------------------------------------------------------------------------------


def _corrupt(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    b = bytearray(raw)
    kind = rng.choice(["flip", "flips", "cut", "cut512", "zero512", "insert", "delete", "garbage"])
    if kind == "flip":
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "flips":
        for _ in range(rng.randint(2, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "cut":
        b = b[: rng.randrange(len(b))]
    elif kind == "cut512":
        b = b[: 512 * rng.randrange(len(b) // 512)]
    elif kind == "zero512":
        i = 512 * rng.randrange(len(b) // 512)
        b[i : i + 512] = bytes(512)
    elif kind == "insert":
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 600)))
    elif kind == "delete":
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 600)]
    else:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))
    return kind, bytes(b)


def _stream(path: Path, count: int, on_corrupt: str) -> ShardStream:
    decoder = SampleDecoder(16, (0.3,) * 3, (0.4,) * 3, 10, awd_name="awd.a0100", grid=(4, 4))
    return ShardStream(
        path.parent, [path.name], [count], decoder, 4, train=False, on_corrupt=on_corrupt
    )


def _samples(stream: ShardStream) -> dict[str, tuple]:
    out = {}
    for b in stream:
        for i, k in enumerate(b["key"]):
            out[k] = (b["image"][i], int(b["label"][i]), b["windows"][i], b["dip_order"][i])
    return out


def _same(a: tuple, b: tuple) -> bool:
    return all(
        torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(a, b, strict=True)
    )


def test_fuzz_corrupted_shards(analyzed_shards, tmp_path):
    """>= 200 randomly corrupted small shards (with masks) through the loader, raise and skip
    modes: every outcome is correct data, a clear ShardError naming the shard, or skipped
    samples with a warning count; never another exception, never a wrong sample."""
    clean = tmp_path / "clean.tar"
    src = list(iter_tar(analyzed_shards / "val-000000.tar"))[:6]
    with open(clean, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as tw:
        for key, members in src:
            tw.write({"__key__": key, **members})
    ref = _samples(_stream(clean, 6, "raise"))
    assert len(ref) == 6
    rng = random.Random(1234)
    outcomes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    bad = tmp_path / "fuzz.tar"
    n_cases = 240
    for _ in range(n_cases):
        kind, data = _corrupt(clean.read_bytes(), rng)
        kinds[kind] += 1
        bad.write_bytes(data)
        # raise mode: exact data or a ShardError that names the shard
        try:
            got = _samples(_stream(bad, 6, "raise"))
        except ShardError as e:
            assert "fuzz.tar" in str(e), e
            outcomes["raise: clear error"] += 1
        else:
            assert got.keys() == ref.keys() and all(_same(got[k], ref[k]) for k in ref), kind
            outcomes["raise: correct"] += 1
        # skip mode: never an exception; what is delivered is right; losses are counted
        stream = _stream(bad, 6, "skip")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = _samples(stream)
        assert all(k in ref and _same(got[k], ref[k]) for k in got), kind
        if len(got) == 6:
            outcomes["skip: correct"] += 1
        else:
            assert stream.policy.skipped >= 6 - len(got) and caught, kind
            assert any("fuzz.tar" in str(w.message) for w in caught)
            outcomes["skip: skipped with warning"] += 1
    print(f"\nfuzz: {n_cases} corrupted shards, kinds {dict(kinds)}, outcomes {dict(outcomes)}")
    assert outcomes["raise: clear error"] + outcomes["raise: correct"] == n_cases
    assert outcomes["raise: clear error"] > n_cases // 2
