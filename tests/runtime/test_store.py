"""The artifact store under real processes: one builder, waiters that reuse, a SIGKILLed
builder taken over, a corrupt entry moved aside and rebuilt, content keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import IO

import pytest
import yaml
from filelock import FileLock

from helpers import digits_source, wait_for
from winft_lightning.runtime.store import BUILDS, ENTRY, ArtifactStore

# a process that asks the store for one entry; its builder writes a file, then sleeps
WORKER = textwrap.dedent(
    """
    import logging, os, sys, time
    from pathlib import Path
    from winft_lightning.runtime.store import ArtifactStore
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    root, key, sleep, company = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    Path(root, f"started-{os.getpid()}").touch()

    class Waiting(logging.Handler):  # marks this process as waiting on the lock, and as
        def emit(self, record):      # having named its builder's pid
            if "waiting for" in record.getMessage():
                Path(root, f"waiting-{os.getpid()}").touch()
                if "being built by pid" in record.getMessage():
                    Path(root, f"named-{os.getpid()}").touch()

    logging.getLogger().addHandler(Waiting())

    def build(out: Path):
        (out / "partial.txt").write_text(str(os.getpid()))
        print("BUILDING", os.getpid(), flush=True)
        # a loaded machine may start the others late: build until all have started and one
        # of them waits on this build's lock naming this builder (or all of them wait), then sleep
        end = time.monotonic() + 120
        while len(list(Path(root).glob("started-*"))) < company and time.monotonic() < end:
            time.sleep(0.05)
        while (company > 1 and not any(Path(root).glob("named-*"))
               and len(list(Path(root).glob("waiting-*"))) < company - 1
               and time.monotonic() < end):  # fmt: skip
            time.sleep(0.05)
        time.sleep(sleep)
        (out / "payload.txt").write_text(f"built by {os.getpid()}")
        return {"pid": os.getpid()}

    path = ArtifactStore(root).ensure("things", key, build, what="thing")
    print("RESULT", (path / "payload.txt").read_text(), flush=True)
    """
)


def start(
    root: Path, key: str, sleep: float, company: int = 1, out: IO | None = None
) -> subprocess.Popen:
    """A process asking for ``key``; as its builder it waits for ``company`` processes in all.
    Its output goes to ``out`` (a file to read while it runs), else to a pipe."""
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(root), key, str(sleep), str(company)],
        stdout=out or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def builds(root: Path, kind: str = "things") -> list[dict]:
    path = root / BUILDS
    lines = path.read_text().splitlines() if path.is_file() else []
    return [b for b in map(json.loads, lines) if b["kind"] == kind]


def test_four_processes_at_once_build_one_entry(tmp_path):
    procs = [start(tmp_path, "k1", 2.0, company=4) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    (record,) = builds(tmp_path)
    builder = record["built_by"]["pid"]
    assert {o.split("RESULT ")[1].strip() for o in outs} == {f"built by {builder}"}
    assert sum("BUILDING" in o for o in outs) == 1
    waiters = [o for o in outs if "BUILDING" not in o]
    assert len(waiters) == 3
    # a process that starts after the build (a loaded machine) reuses the entry without waiting
    assert all("thing: reusing cached" in o for o in waiters), waiters
    waited = [o for o in waiters if f"being built by pid {builder}" in o]
    assert waited and all("waited" in o for o in waited), waiters
    assert not list((tmp_path / "things").glob(".build-*"))  # published by rename


def test_sigkilled_builder_is_taken_over_and_its_partial_build_discarded(tmp_path):
    first = start(tmp_path, "k2", 120.0)
    owner = tmp_path / "things" / ".locks" / "k2.owner.json"
    wait_for(lambda: (tmp_path / "things" / ".build-k2" / "partial.txt").is_file(), first)
    log = tmp_path / "second.out"
    with log.open("w") as second_out:
        second = start(tmp_path, "k2", 0.5, out=second_out)
    wait_for(lambda: json.loads(owner.read_text())["pid"] == first.pid, first)
    # the second process found the lock held and waits on it now
    wait_for(lambda: "thing: waiting for things/k2" in log.read_text(), second)
    assert second.poll() is None
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    second.wait(timeout=60)
    out = log.read_text()
    assert second.returncode == 0, out
    assert f"taking over things/k2 from a builder that died (pid {first.pid}" in out
    assert f"RESULT built by {second.pid}" in out
    entry = tmp_path / "things" / "k2"
    assert (entry / "partial.txt").read_text() == str(second.pid)  # nothing of the dead one's
    (record,) = builds(tmp_path)
    assert record["built_by"]["pid"] == second.pid
    assert not owner.exists()


def test_failed_build_leaves_no_entry_and_releases_the_lock(tmp_path):
    store = ArtifactStore(tmp_path)

    def broken(out: Path) -> None:
        (out / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.ensure("things", "k3", broken, what="thing")
    assert not store.path("things", "k3").exists()

    def good(out: Path) -> None:
        (out / "whole.bin").write_bytes(b"y" * 10)

    path = store.ensure("things", "k3", good, what="thing")
    assert sorted(p.name for p in path.iterdir()) == [ENTRY, "whole.bin"]


def test_corrupt_entry_is_moved_aside_and_rebuilt(tmp_path, caplog):
    store = ArtifactStore(tmp_path)

    def build(out: Path) -> None:
        (out / "data.tar").write_bytes(bytes(range(256)) * 8)

    path = store.ensure("things", "k4", build, what="thing")
    with open(path / "data.tar", "r+b") as f:
        f.truncate(1000)
    with caplog.at_level("WARNING"):
        again = store.ensure("things", "k4", build, what="thing")
    assert again == path and (path / "data.tar").stat().st_size == 2048
    assert f"{path / 'data.tar'} is 1000 bytes" in caplog.text
    (aside,) = (tmp_path / "things" / ".corrupt").iterdir()
    assert (aside / "data.tar").stat().st_size == 1000
    assert len(builds(tmp_path)) == 2


def test_same_folder_name_different_shards_get_different_mask_entries(make_cfg, tmp_path):
    from winft_lightning.models.teacher import file_sha256, save_untrained
    from winft_lightning.stages import cache
    from winft_lightning.stages.prepare import prepare_shards

    cfg = make_cfg("experiment=fmnist_awd_vit", "debug=tiny")
    teacher = save_untrained(cfg.teacher.model, tmp_path / "teacher.ckpt")
    sha = file_sha256(teacher)
    a, b = tmp_path / "a" / "shards", tmp_path / "b" / "shards"
    for out, train in ((a, 120), (b, 80)):
        prepare_shards(digits_source(limit={"train": train, "val": 20, "test": 20}), out,
                       progress=False)  # fmt: skip
    roots = []
    for shards in (a, b):
        cfg = make_cfg("experiment=fmnist_awd_vit", "debug=tiny", f"data.root={shards}",
                       f"teacher.ckpt={teacher}")  # fmt: skip
        roots.append(cache.ensure_masks(cfg, teacher, sha, shards))
    assert roots[0] != roots[1]
    for shards, root in zip((a, b), roots, strict=True):
        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["parent"]["root"] == str(shards.resolve())
    counts = [json.loads((r / "manifest.json").read_text())["splits"]["train"]["count"]
              for r in roots]  # fmt: skip
    assert counts == [120, 80]


@pytest.mark.slow
def test_teacher_source_trains_the_teacher_on_its_own_shards(make_cfg, tmp_path):
    """teacher.source={limit: {train: null}}: the teacher trains on every train image, the
    student and its masks on the run's 300-image subset; a second student size reuses the
    teacher."""
    from winft_lightning.__main__ import run

    def cfg_for(train: int, name: str):
        return make_cfg("experiment=fmnist_awd_vit", "debug=tiny", "trainer.max_epochs=1",
                        "teacher.max_epochs=1", f"data.source.limit.train={train}",
                        "teacher.source={limit: {train: null}}",
                        f"paths.cache_dir={tmp_path / 'cache'}", run_dir=tmp_path / name)  # fmt: skip

    teacher_row, student = run(cfg_for(300, "a"))
    counts = {}
    for entry in (tmp_path / "cache" / "shards").glob("[!.]*"):
        counts[entry] = json.loads((entry / "manifest.json").read_text())["splits"]["train"]
    small, every = sorted(c["count"] for c in counts.values())
    assert small == 300 and every > 1000  # all of digits' train split (debug=tiny: 600)
    job = yaml.safe_load((Path(teacher_row["run_dir"]) / "job.yaml").read_text())
    assert counts[Path(job["data"]["root"])]["count"] == every
    assert job["data"]["source"]["limit"]["train"] is None  # what the teacher's shards came from
    masks = json.loads((Path(student["mask_root"]) / "manifest.json").read_text())
    assert masks["splits"]["train"]["count"] == 300
    _, again = run(cfg_for(200, "b"))
    cache = tmp_path / "cache"
    assert len(builds(cache, "teachers")) == 1 and len(builds(cache, "masks")) == 2
    assert again["teacher_ckpt"] == student["teacher_ckpt"]


HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from filelock import FileLock
    lock_path, owner_path, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    lock = FileLock(lock_path)
    lock.acquire()
    go.touch()
    time.sleep(0.3)  # a builder slow to name itself: the window the waiter must outlast
    owner_path.write_text(json.dumps({"host": "h", "pid": os.getpid(), "since": "now"}))
    while not Path(str(go) + ".done").exists():
        time.sleep(0.02)
    lock.release()
    """
)


def test_a_waiter_names_a_builder_that_names_itself_late(tmp_path):
    """The store's waiter logs who builds even when it reaches the lock before the builder
    has written its owner file (the race that made the four-process test flaky)."""
    from winft_lightning.runtime import store as st

    store = ArtifactStore(tmp_path)
    lock_path, owner_path = store._lock_paths("things", "k9")
    go = tmp_path / "go"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path), str(owner_path), str(go)]
    )
    wait_for(go.is_file, holder)
    try:
        assert not st._try_acquire(FileLock(lock_path), owner_path)  # held; its owner known
        assert json.loads(owner_path.read_text())["pid"] == holder.pid
    finally:
        Path(str(go) + ".done").touch()
        holder.wait(timeout=30)
    assert st._try_acquire(FileLock(lock_path), owner_path)  # free again: taken at once
