"""Our tar subset (``data/ustar.py``): the writer gives webdataset's ``TarWriter`` bytes, the
reader gives what ``tarfile`` reads."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from winft_lightning.data.ustar import UstarWriter, read_members

SIZES = (0, 1, 511, 512, 513, 1025, 4096)


def tarfile_members(path: Path) -> list[tuple[str, bytes]]:
    """The naive reading: every regular file through the standard library's ``tarfile``."""
    with tarfile.open(path) as tar:
        return [(i.name, tar.extractfile(i).read()) for i in tar.getmembers() if i.isreg()]


def test_shard_reader_reads_what_tarfile_reads(digits_shards, tmp_path):
    """``read_members`` (the header reader behind ``shards.iter_tar``) against ``tarfile``: a real
    shard and a ustar archive with every padding case, a long name split into ustar's prefix,
    dotted extensions and a directory (skipped)."""
    shard = digits_shards / "train-000000.tar"
    with shard.open("rb") as f:
        assert list(read_members(f)) == tarfile_members(shard)
    made = tmp_path / "made.tar"
    rng = np.random.default_rng(0)
    long_dir = "d" * 120  # the name goes over 100 bytes: ustar keeps the directory as prefix
    with tarfile.open(made, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("a_dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for i, size in enumerate((0, 1, 511, 512, 513, 1025, 4096)):
            name = f"{long_dir}/k{i}.awd.a0100.i16z" if i == 4 else f"k{i}.png"
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(data))
    with made.open("rb") as f:
        got = list(read_members(f))
    assert got == tarfile_members(made) and len(got) == 7
    assert got[4][0] == f"{long_dir}/k4.awd.a0100.i16z"


def random_samples(count: int, seed: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    """``count`` samples whose members cover every padding case, in unsorted order."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        exts = ["png", "cls", "awd_random.a0100.i16z", "awd.a0050.i16z", "crc"][: 2 + i % 4]
        members = {ext: rng.integers(0, 256, SIZES[(i + j) % len(SIZES)], dtype=np.uint8).tobytes()
                   for j, ext in enumerate(exts)}  # fmt: skip
        samples.append((f"train_{i:08d}", members))
    return samples


@pytest.mark.parametrize("count", [1, 2, 3, 17, 40])
def test_writer_writes_the_bytes_of_webdatasets_tarwriter(count):
    """Byte for byte what ``TarWriter`` wrote for our shards (headers, padding, sorted members,
    the end blocks and the record padding after them), for archives of many lengths."""
    samples = random_samples(count, seed=count)
    ours, theirs = io.BytesIO(), io.BytesIO()
    writer = UstarWriter(ours)
    tw = wds.TarWriter(theirs, encoder=False, mtime=0, user="winft", group="winft")
    for key, members in samples:
        writer.write(key, members)
        tw.write({"__key__": key, **members})
    writer.close()
    tw.close()
    assert ours.getvalue() == theirs.getvalue()
    assert writer.offset == len(ours.getvalue()) and writer.offset % (20 * 512) == 0
    ours.seek(0)
    want = [(f"{k}.{ext}", m[ext]) for k, m in samples for ext in sorted(m)]
    assert list(read_members(ours)) == want


@pytest.mark.parametrize("name", ["k" * 97 + ".png", "s_0.pñg"])
def test_writer_refuses_a_name_tarfile_would_give_a_pax_header(name):
    key, ext = name.split(".", 1)
    with pytest.raises(ValueError, match="not an ASCII name of at most 100 bytes"):
        UstarWriter(io.BytesIO()).write(key, {ext: b"x"})
