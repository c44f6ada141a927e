"""What an ImageFolder source reads, listed cheaply: every image file's relative path, size and
mtime_ns (one ``stat`` per file from an ``os.scandir`` walk, no file is opened).

Its digest is part of the shards' store key, so a changed tree (an image added, removed,
replaced or touched) builds a new entry while an unchanged one is reused. The listing is kept
in the entry (:data:`LISTING_FILE`), and the next build diffs the tree against it to say what
changed (:func:`describe_changes`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from winft_lightning.data.shards import SPLITS
from winft_lightning.data.sources import DEFAULT_FOLDER_SPLITS, FOLDER_EXTS

LISTING_FILE = "source_listing.json.gz"
_SEP = "\t"  # record: path, size, mtime_ns; parsed with rsplit, so a tab in a name is safe
_DIR_TAIL = f"/{_SEP}-{_SEP}-"


@dataclass(frozen=True)
class FolderDirs:
    """``used``: split directory -> the splits read from it; ``unused``: the tree's other
    top-level directories, and named split dirs that do not exist, with why each is not read."""

    root: Path
    used: dict[str, list[str]]
    unused: dict[str, str]

    def note(self) -> str:
        """e.g. ``using train/ (train, carved val) and test/ (test); not using val/ (...)``."""
        carved = [s for s in SPLITS if not any(s in v for v in self.used.values())]
        parts = [
            f"{sub}/ ({', '.join(splits + [f'carved {s}' for s in carved if 'train' in splits])})"
            for sub, splits in self.used.items()
        ]
        line = f"imagefolder {self.root}: using {_and(parts)}"
        if self.unused:
            line += f"; not using {_and([f'{d}/ ({why})' for d, why in self.unused.items()])}"
        return line


def folder_dirs(source: Mapping[str, Any]) -> FolderDirs:
    """Which directories :func:`~winft_lightning.data.sources.imagefolder` reads for
    ``source`` (a ``data.source`` mapping), and which it leaves alone."""
    root = Path(str(source.get("path") or "")).expanduser()
    splits = dict(source.get("splits") or DEFAULT_FOLDER_SPLITS)
    used: dict[str, list[str]] = {}
    missing: dict[str, str] = {}
    for split, sub in splits.items():
        if not sub:
            continue
        sub = Path(str(sub)).as_posix()
        if (root / sub).is_dir():
            used.setdefault(sub, []).append(split)
        else:
            missing[sub] = f"data.source.splits.{split} names it; it does not exist"
    tops = {sub.split("/")[0] for sub in used}
    unused = {d: _why_unused(d, splits) for d in _top_dirs(root) if d not in tops}
    return FolderDirs(root, used, {**unused, **missing})


@dataclass(frozen=True)
class FolderListing:
    """``records``: sorted ``"<rel path>\\t<size>\\t<mtime_ns>"``, one per image file, plus
    ``"<split dir>/<class>/\\t-\\t-"`` per class directory (a new empty class changes the
    labels)."""

    dirs: FolderDirs
    records: list[str]

    @cached_property
    def digest(self) -> str:
        blob = "\0".join(self.records).encode("utf-8", "surrogateescape")
        return hashlib.sha256(blob).hexdigest()

    def files(self) -> list[str]:
        return [r for r in self.records if not r.endswith(_DIR_TAIL)]

    def summary(self) -> dict[str, Any]:
        """Small enough for ``entry.json``: the digest, image files per split dir."""
        files = self.files()
        per_dir = {d: sum(r.startswith(f"{d}/") for r in files) for d in self.dirs.used}
        return {"digest": self.digest, "files": len(files), "per_split_dir": per_dir}

    def save(self, path: Path) -> None:
        text = json.dumps({"root": str(self.dirs.root), "records": self.records})
        path.write_bytes(gzip.compress(text.encode("utf-8", "surrogateescape"), mtime=0))


def load_records(path: Path) -> list[str]:
    text = gzip.decompress(path.read_bytes()).decode("utf-8", "surrogateescape")
    return json.loads(text)["records"]


def list_folder(source: Mapping[str, Any]) -> FolderListing:
    """The class dirs and image files :func:`~winft_lightning.data.sources.imagefolder` would
    read for ``source``, recursively (not into symlinked subdirectories, as ``Path.rglob``)."""
    dirs = folder_dirs(source)
    records: list[str] = []
    for sub in dirs.used:
        with os.scandir(dirs.root / sub) as entries:
            for entry in entries:
                if entry.is_dir():  # a class dir, symlinked or not (as Path.is_dir)
                    records.append(f"{sub}/{entry.name}{_DIR_TAIL}")
                    _walk(entry.path, f"{sub}/{entry.name}", records)
    records.sort()
    return FolderListing(dirs, records)


def _walk(path: str, rel: str, records: list[str]) -> None:
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _walk(entry.path, f"{rel}/{entry.name}", records)
            elif os.path.splitext(entry.name)[1].lower() in FOLDER_EXTS and entry.is_file():
                st = entry.stat()
                records.append(f"{rel}/{entry.name}{_SEP}{st.st_size}{_SEP}{st.st_mtime_ns}")


def _top_dirs(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _why_unused(name: str, splits: Mapping[str, Any]) -> str:
    if name in splits and not splits[name]:
        return f"data.source.splits.{name} is null"
    if name in splits:
        return f"data.source.splits.{name}={splits[name]}"
    return "not named in data.source.splits"


def _and(items: list[str]) -> str:
    if len(items) < 2:
        return items[0] if items else "no directory"
    return ", ".join(items[:-1]) + " and " + items[-1]


def describe_changes(old: list[str], new: list[str], limit: int = 12) -> str:
    """``old`` -> ``new`` records as e.g. ``4 files added under train/b, 1 file replaced under
    val/a`` (per directory; replaced: same path, other size or mtime)."""
    before, after = dict(map(_split, old)), dict(map(_split, new))
    files: Counter[tuple[str, str]] = Counter()
    dirs = []
    for path in sorted(before.keys() | after.keys()):
        if path not in before:
            kind = "added"
        elif path not in after:
            kind = "removed"
        elif before[path] != after[path]:
            kind = "replaced"
        else:
            continue
        if path.endswith("/"):
            dirs.append(f"class dir {path} {kind}")
        else:
            files[(path.rsplit("/", 1)[0], kind)] += 1
    phrases = dirs + [
        f"{n} file{'s' * (n != 1)} {kind} under {where}"
        for (where, kind), n in sorted(files.items())
    ]
    if len(phrases) > limit:
        phrases = [*phrases[:limit], f"and {len(phrases) - limit} more"]
    return ", ".join(phrases) or "no file changed"


def _split(record: str) -> tuple[str, str]:
    path, size, mtime = record.rsplit(_SEP, 2)
    return path, f"{size}{_SEP}{mtime}"
