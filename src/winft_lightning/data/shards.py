"""WebDataset shard sets on disk: writing (atomic, resumable), the manifest, strict reading.

Layout: ``<root>/<split>-%06d.tar`` and ``<root>/manifest.json``. A sample is the tar members
``<key>.<ext>``: the image (``png``/``jpg``/...), ``cls`` (ascii int), after analyze the mask
keys, and ``crc`` (ascii hex CRC-32 of all other members), so a flipped byte anywhere in a
sample is detected instead of decoded into a wrong batch.

A shard is written under a temporary name and renamed when complete; completed shards are
listed in ``<root>/.journal.json`` so a killed run resumes after them; the manifest is written
last. A directory without ``manifest.json`` is never a shard set.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from winft_lightning.data.errors import DataError, ManifestError, ShardError
from winft_lightning.data.ustar import UstarWriter, read_members
from winft_lightning.runtime.files import CODE_VERSION, now_iso, write_json_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
JOURNAL = ".journal.json"
SPLITS = ("train", "val", "test")
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "tif", "tiff")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def sample_key(split: str, index: int) -> str:
    """Sample keys carry no dots (WebDataset splits member names at the first dot)."""
    return f"{split}_{index:08d}"


def members_crc(key: str, members: Mapping[str, bytes]) -> str:
    """CRC-32 (8 hex chars) over the key and every member except ``crc``, in name order."""
    crc = zlib.crc32(key.encode())
    for ext in sorted(members):
        if ext != "crc":
            crc = zlib.crc32(ext.encode() + b"\0", crc)
            crc = zlib.crc32(members[ext], crc)
    return f"{crc:08x}"


class Journal:
    """Shards completed so far by an unfinished writer run, keyed by a config fingerprint.

    A journal from another configuration is discarded (``stale`` tells), never resumed."""

    def __init__(self, root: Path, fingerprint: str, name: str = JOURNAL):
        self.path = Path(root) / name
        self.fingerprint = fingerprint
        self.stale = False
        self.splits: dict[str, list[dict[str, Any]]] = {}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("fingerprint") == fingerprint:
                self.splits = old.get("splits", {})
            else:
                self.stale = True
        # resume only shards whose files are still there with the recorded size
        for split, records in self.splits.items():
            good = []
            for rec in records:
                f = self.path.parent / rec["name"]
                if not (f.is_file() and f.stat().st_size == rec["bytes"]):
                    break
                good.append(rec)
            self.splits[split] = good

    def done(self, split: str) -> list[dict[str, Any]]:
        return list(self.splits.get(split, []))

    def add(self, split: str, record: dict[str, Any]) -> None:
        self.splits.setdefault(split, []).append(record)
        write_json_atomic(self.path, {"fingerprint": self.fingerprint, "splits": self.splits})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class SplitWriter:
    """Writes one split's samples into shards of at most ``maxcount`` samples / ``maxsize``
    bytes, each under a temp name, fsynced and renamed when full, then journalled."""

    def __init__(
        self, root: Path, split: str, journal: Journal, maxcount: int = 10000, maxsize: int = 1e9
    ):
        if maxcount < 1 or maxsize < 1:
            raise ValueError(f"maxcount and maxsize must be >= 1, got {maxcount}, {maxsize}")
        self.root, self.split, self.journal = Path(root), split, journal
        self.maxcount, self.maxsize = int(maxcount), int(maxsize)
        self.records = journal.done(split)
        self.index = len(self.records)
        self._file = self._tar = None
        self._count = 0

    @property
    def samples_done(self) -> int:
        """Samples in shards already complete (a resumed run skips that many)."""
        return sum(r["count"] for r in self.records)

    def _open(self) -> None:
        name = shard_name(self.split, self.index)
        self._tmp = self.root / f".{name}.tmp"
        self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed in _close_shard)
        self._tar = UstarWriter(self._file)
        self._count = 0

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        """Add one sample; ``members`` maps extension -> bytes (``crc`` is added here)."""
        if self._tar is None:
            self._open()
        self._tar.write(key, with_crc(key, members))
        self._count += 1
        if self._count >= self.maxcount or self._file.tell() >= self.maxsize:
            self._close_shard()

    def _close_shard(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks into self._file
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = shard_name(self.split, self.index)
        final = self.root / name
        os.replace(self._tmp, final)
        record = {"name": name, "count": self._count, "bytes": final.stat().st_size}
        self.records.append(record)
        self.journal.add(self.split, record)
        self.index += 1
        self._file = self._tar = None

    def finish(self) -> list[dict[str, Any]]:
        """Close the last shard; returns every shard record of the split."""
        if self._tar is not None:
            self._close_shard()
        return self.records


def with_crc(key: str, members: Mapping[str, bytes]) -> dict[str, bytes]:
    """``members`` with their ``crc`` member added."""
    return {**members, "crc": members_crc(key, members).encode()}


def write_shard(
    root: Path, name: str, samples: Iterable[tuple[str, Mapping[str, bytes]]]
) -> dict[str, Any]:
    """Write ``samples`` as the shard ``root/name``: temp name, fsync, rename. Returns its
    record (name, count, bytes)."""
    tmp = Path(root) / f".{name}.{os.getpid()}.tmp"
    count = 0
    with open(tmp, "wb") as f:
        tar = UstarWriter(f)
        for key, members in samples:
            tar.write(key, with_crc(key, members))
            count += 1
        tar.close()
        f.flush()
        os.fsync(f.fileno())
    final = Path(root) / name
    os.replace(tmp, final)
    return {"name": name, "count": count, "bytes": final.stat().st_size}


def split_entry(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Manifest entry of one split: count and its shards (names, per-shard counts and sizes)."""
    return {
        "count": sum(r["count"] for r in records),
        "shards": [r["name"] for r in records],
        "shard_counts": [r["count"] for r in records],
        "shard_bytes": [r["bytes"] for r in records],
    }


def base_manifest(**fields: Any) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "code_version": CODE_VERSION,
        "created": now_iso(),
    } | (fields)


def read_manifest(root: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """Load ``<root>/manifest.json`` and check it against the shard files (present, same size).

    Adds ``root`` (absolute) to the returned dict. Raises :class:`ManifestError`."""
    root = Path(root).expanduser().resolve()
    path = root / MANIFEST
    if not path.is_file():
        raise ManifestError(
            f"{root} is not a complete shard set: no {MANIFEST} (a prepare/analyze run that "
            "was interrupted leaves none; re-run it to resume)"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format_version {version}, this code reads {FORMAT_VERSION}"
        )
    for key in ("splits", "classes"):
        if key not in manifest:
            raise ManifestError(f"{path} has no '{key}'")
    if check_files:
        for split, entry in manifest["splits"].items():
            for name, size in zip(entry["shards"], entry["shard_bytes"], strict=True):
                f = root / name
                if not f.is_file():
                    raise ManifestError(f"shard {f} of split {split} listed in {path} is missing")
                if f.stat().st_size != size:
                    raise ManifestError(
                        f"shard {f} is {f.stat().st_size} bytes, {path} says {size} "
                        "(truncated, or rewritten by another run)"
                    )
    manifest["root"] = str(root)
    return manifest


def finished_set(out: Path, fingerprint: str, stage: str, made_of: str, fix: str) -> dict | None:
    """The manifest of the finished set at ``out`` when it was made of the same inputs
    (``fingerprint``), None when ``out`` holds no finished set; a set made of other inputs
    (``made_of`` names them) is refused with ``fix``, never overwritten."""
    if not (out / MANIFEST).is_file():
        return None
    old = json.loads((out / MANIFEST).read_text())
    if old.get("fingerprint") == fingerprint:
        log.info("%s: %s is complete already (same %s), nothing to do", stage, out, made_of)
        return read_manifest(out)
    raise DataError(f"{out} already holds a set of another {made_of} ({old.get('source')}); {fix}")


def iter_tar(path: str | Path, expected: int | None = None) -> Iterator[tuple[str, dict]]:
    """Samples ``(key, {ext: bytes})`` of one shard, in file order, strictly.

    Raises :class:`ShardError` naming the shard (and the sample being read) on an unreadable or
    truncated tar, a member without a ``key.ext`` name, a key that reappears after another one,
    a duplicate member, or (with ``expected``) a sample count other than ``expected``: tar
    readers stop silently at a damaged header, so the count is what proves the shard whole.
    A sample is yielded only once the next one starts or the archive ends cleanly."""
    name = str(path)
    key, members, n = None, {}, 0
    seen: set[str] = set()
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            for member, data in read_members(f):
                base = member.rsplit("/", 1)[-1]
                k, dot, ext = base.partition(".")
                if not dot or not k or not ext:
                    raise ShardError(name, f"member {member!r} is not named <key>.<ext>", key)
                if k != key:
                    if key is not None:
                        yield key, members
                        n += 1
                    if k in seen:
                        raise ShardError(name, "key appears twice, not contiguous", k)
                    seen.add(k)
                    key, members = k, {}
                ext = ext.lower()
                if ext in members:
                    raise ShardError(name, f"duplicate member {member!r}", k)
                members[ext] = data
    except ShardError:
        raise
    except Exception as e:  # a damaged archive: ValueError, OSError, UnicodeError, ...
        raise ShardError(
            name, f"unreadable tar after {n} complete samples ({type(e).__name__}: {e})", key
        ) from e
    last = key is not None
    if expected is not None and n + last < expected:
        # the archive ended early (a cut between members reads as a valid shorter tar): the
        # last sample read may itself be cut short, so it is not delivered either
        raise ShardError(
            name, f"holds {n + last} samples, the manifest says {expected} (truncated)", key
        )
    if last:
        yield key, members
        n += 1
    if expected is not None and n != expected:
        raise ShardError(name, f"holds {n} samples, the manifest says {expected}")


def check_crc(shard: str, key: str, members: Mapping[str, bytes]) -> None:
    """Raise :class:`ShardError` unless the sample's ``crc`` member matches its contents."""
    stored = members.get("crc")
    if stored is None:
        raise ShardError(shard, f"no 'crc' member (has {sorted(members)})", key)
    try:
        stored_s = stored.decode("ascii").strip()
    except UnicodeDecodeError:
        stored_s = repr(stored[:16])
    if stored_s != members_crc(key, members):
        raise ShardError(shard, "CRC mismatch: the sample's bytes are corrupt", key)
