"""A content-keyed artifact store shared by every process on one cache directory.

An entry is ``<root>/<kind>/<key>/`` with ``entry.json`` (its files and sizes, who built it)
written last. It is built by one process at a time:

* the builder holds ``<root>/<kind>/.locks/<key>.lock``, a ``filelock.FileLock``. On Linux
  that is ``flock(2)``: the kernel drops it when the holder dies, even by SIGKILL, so the next
  process takes the build over. flock works on local disks and on NFSv4 (Linux maps it onto
  NFS byte-range locks); on Lustre it needs the ``flock`` mount option, and on filesystems
  without working locks (some FUSE mounts) two builders can run: put ``paths.cache_dir`` on
  a local disk or an NFSv4/Lustre(-o flock) mount.
* it builds into ``<root>/<kind>/.build-<key>/`` and publishes with one ``rename``: an entry
  directory exists complete or not at all. A killed builder leaves only the build dir,
  which is never read as an entry: the next builder resumes it where its kind keeps a
  journal (``ensure(resume=True)``: shards, masks, and teachers from their last epoch
  checkpoint), else starts afresh.
* everyone else waits on the lock (logging what they wait for and who holds it), then
  reuses the entry.
* an entry whose files disagree with ``entry.json`` (a truncated shard, a missing file) is
  moved to ``<root>/<kind>/.corrupt/`` with a warning naming the file, and rebuilt.

Every build is appended to ``<root>/builds.jsonl``: the count of builds per key is there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from winft_lightning.runtime.files import now_iso, write_json_atomic
from winft_lightning.runtime.world import World

log = logging.getLogger(__name__)

ENTRY = "entry.json"
BUILDS = "builds.jsonl"
WAIT_LOG_SECONDS = 60.0


class CorruptEntry(Exception):
    """An entry's files disagree with its ``entry.json``."""


def list_files(root: Path) -> dict[str, int]:
    """Relative path -> size of every regular file under ``root``."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ENTRY
    }


def verify_entry(path: Path) -> dict[str, Any]:
    """The entry's record, after checking each listed file is there with its size."""
    try:
        record = json.loads((path / ENTRY).read_text())
    except (OSError, ValueError) as err:
        raise CorruptEntry(f"{path / ENTRY} is unreadable ({err})") from err
    for rel, size in record.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            raise CorruptEntry(f"{f} is missing")
        if f.stat().st_size != size:
            raise CorruptEntry(f"{f} is {f.stat().st_size} bytes, {path / ENTRY} says {size}")
    return record


class ArtifactStore:
    """Entries under ``root``, built once across processes (see the module doc)."""

    def __init__(self, root: str | Path, world: World | None = None):
        self.root = Path(root).expanduser().resolve()
        self.world = world or World()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def record(self, kind: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(kind, key) / ENTRY).read_text())

    def _complete(self, kind: str, key: str, *, locked: bool) -> bool:
        """Is a verified entry there? A corrupt one is moved aside, but only by the holder of
        its lock (``locked``): without it the answer is just no."""
        path = self.path(kind, key)
        if not path.exists():
            return False
        try:
            verify_entry(path)
            return True
        except CorruptEntry as err:
            if not locked:
                return False
            aside = self.root / kind / ".corrupt" / f"{key}-{time.strftime('%Y%m%d-%H%M%S')}"
            log.warning(
                "%s %s is corrupt: %s; moving it to %s and rebuilding", kind, key, err, aside
            )
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, aside)
            return False

    def ensure(
        self,
        kind: str,
        key: str,
        build: Callable[[Path], dict[str, Any] | None],
        *,
        what: str,
        collective: bool = False,
        resume: bool = False,
    ) -> Path:
        """The entry ``kind/key``, built by ``build(build_dir)`` if it is not there yet.

        ``collective``: every rank of the world calls ``build`` (a DDP teacher, analysis split
        over ranks); else rank 0 alone builds and the others wait. ``resume``: a build dir left
        by a killed builder is handed to ``build`` as it is (its own journal resumes it);
        else it is discarded. ``build`` may return fields for ``entry.json``'s ``info``."""
        world, final = self.world, self.path(kind, key)
        start = time.perf_counter()
        lock = None
        if world.is_zero:
            decision = "reuse" if self._complete(kind, key, locked=False) else None
            if decision is None:
                lock = self._acquire(kind, key, what)
                decision = "reuse" if self._complete(kind, key, locked=True) else "build"
                if decision == "reuse":
                    lock.release()
                    lock = None
        else:
            decision = None
        decision = world.share(f"store/{kind}", decision)
        if decision == "reuse":
            log.info(
                "%s: reusing cached %s (%.1f ms)", what, final, 1e3 * (time.perf_counter() - start)
            )
            return final
        try:
            build_dir = self.root / kind / f".build-{key}"
            if world.is_zero:
                if build_dir.exists() and not resume:
                    shutil.rmtree(build_dir)
                build_dir.mkdir(parents=True, exist_ok=True)
                log.info("%s: building %s", what, final)
            world.barrier(f"store/{kind}/ready")
            info = build(build_dir) if collective or world.is_zero else None
            world.barrier(f"store/{kind}/built")
            if world.is_zero:
                self._publish(kind, key, build_dir, info, time.perf_counter() - start)
            world.barrier(f"store/{kind}/published")
        finally:
            if lock is not None:
                self._release(kind, key, lock)
        return final

    def _lock_paths(self, kind: str, key: str) -> tuple[Path, Path]:
        locks = self.root / kind / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return locks / f"{key}.lock", locks / f"{key}.owner.json"

    def _acquire(self, kind: str, key: str, what: str) -> FileLock:
        lock_path, owner_path = self._lock_paths(kind, key)
        lock = FileLock(lock_path)
        if not _try_acquire(lock, owner_path):
            log.info(
                "%s: waiting for %s/%s, being built by %s (lock %s)",
                what, kind, key, _owner(owner_path), lock_path,
            )  # fmt: skip
            waited = time.perf_counter()
            while True:
                try:
                    lock.acquire(timeout=WAIT_LOG_SECONDS)
                    break
                except Timeout:
                    log.info("%s: still waiting (%.0f s)", what, time.perf_counter() - waited)
            log.info("%s: waited %.1f s for %s/%s", what, time.perf_counter() - waited, kind, key)
        if owner_path.is_file():  # its holder died without releasing: the kernel did
            log.warning(
                "%s: taking over %s/%s from a builder that died (%s)",
                what, kind, key, _owner(owner_path),
            )  # fmt: skip
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": now_iso()}
        write_json_atomic(owner_path, me)
        return lock

    def _release(self, kind: str, key: str, lock: FileLock) -> None:
        self._lock_paths(kind, key)[1].unlink(missing_ok=True)
        lock.release()

    def _publish(
        self, kind: str, key: str, build_dir: Path, info: dict | None, seconds: float
    ) -> None:
        record = {
            "kind": kind,
            "key": key,
            "created": now_iso(),
            "built_by": {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "world_size": self.world.world_size,
            },
            "build_seconds": round(seconds, 2),
            "info": info or {},
            "files": list_files(build_dir),
        }
        write_json_atomic(build_dir / ENTRY, record)
        os.replace(build_dir, self.path(kind, key))
        line = json.dumps({k: v for k, v in record.items() if k not in ("files", "info")})
        with open(self.root / BUILDS, "a") as f:
            f.write(line + "\n")
        log.info("%s/%s: published after %.1f s", kind, key, seconds)


def _try_acquire(lock: FileLock, owner_path: Path, settle: float = 1.0) -> bool:
    """Take the lock if it is free. If it is held, wait up to ``settle`` seconds (taking it
    should it come free) for its holder to name itself in ``owner_path``: a builder writes
    it just after taking the lock, and a waiter that logs "another process" in between tells
    the user nothing. Returns whether the lock is now held."""
    end = time.monotonic() + settle
    while True:
        try:
            lock.acquire(timeout=0)
            return True
        except Timeout:
            if owner_path.is_file() or time.monotonic() >= end:
                return False
        time.sleep(0.02)  # a bounded poll for the holder's owner file, not a synchronisation


def _owner(path: Path) -> str:
    try:
        o = json.loads(path.read_text())
        return f"pid {o['pid']} on {o['host']} since {o['since']}"
    except (OSError, ValueError, KeyError):
        return "another process"
