"""Sources -> WebDataset shards: ``python -m winft_lightning.prepare data=NAME``.

Writes ``<out_dir>/<split>-%06d.tar`` for train, val and test, then ``manifest.json``. A killed
run resumes after its last complete shard; a finished shard set is left alone.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from winft_lightning.data.errors import DataError
from winft_lightning.data.folder_listing import folder_dirs
from winft_lightning.data.progress import image_progress
from winft_lightning.data.shards import (
    FORMAT_VERSION,
    JOURNAL,
    MANIFEST,
    SPLITS,
    Journal,
    SplitWriter,
    base_manifest,
    finished_set,
    read_manifest,
    sample_key,
    split_entry,
    write_json_atomic,
)
from winft_lightning.data.sources import load_source
from winft_lightning.runtime.hashing import json_digest
from winft_lightning.runtime.resolvers import to_plain

log = logging.getLogger(__name__)

_OWN_FILES = re.compile(r"^(\.)?(train|val|test)-\d{6}\.tar(\.tmp)?$")


def fingerprint(obj: Any) -> str:
    return json_digest([FORMAT_VERSION, obj])


def remove_shard_set(root: Path, keep: set[str] = frozenset()) -> None:
    """Delete this layer's files in ``root`` (shards, temp shards, journal, manifest), except
    the names in ``keep``. Other files are never touched."""
    for f in root.iterdir():
        if f.name in keep:
            continue
        if _OWN_FILES.match(f.name) or f.name in (MANIFEST, JOURNAL):
            f.unlink()


def prepare_shards(
    source: Mapping[str, Any],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the shard set of ``source`` (a ``data.source`` config) into ``out_dir``.

    Shard size: ``source.maxcount`` samples / ``source.maxsize`` bytes. Returns the manifest.
    An existing complete set of the same config is returned as is; one of another config is
    refused unless ``overwrite``."""
    cfg = dict(to_plain(source))
    maxcount = int(cfg.get("maxcount") or 10000)
    maxsize = int(cfg.get("maxsize") or 1_000_000_000)
    fp = fingerprint(cfg)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        fix = "pass overwrite=true or choose another out_dir"
        done = finished_set(out, fp, "prepare", "source config", fix)
        if done is not None:
            return done
    if overwrite:
        remove_shard_set(out)

    start = time.perf_counter()
    data = load_source(cfg)
    journal = Journal(out, fp)
    if journal.stale:
        log.warning("prepare: discarding the unfinished shard set of another config in %s", out)
    splits: dict[str, Any] = {}
    written = 0
    with image_progress(disable=not progress) as bar:
        for split in SPLITS:
            writer = SplitWriter(out, split, journal, maxcount=maxcount, maxsize=maxsize)
            splits[split], now = _write_split(writer, data.splits[split], bar)
            written += now
    seconds = time.perf_counter() - start
    manifest = base_manifest(
        kind="images",
        source=cfg,
        fingerprint=fp,
        classes=data.classes,
        num_classes=len(data.classes),
        splits=splits,
        prepare_seconds=round(seconds, 2),
    )
    return _publish(out, manifest, journal, cfg.get("name"), seconds, written)


def _write_split(writer: SplitWriter, items: Sequence[Any], bar: Any) -> tuple[dict, int]:
    """Write a split's source ``items`` (each ``.load()`` -> ``(ext, bytes)``, with a
    ``.label``) with ``writer``, after the samples its journal has in complete shards, advancing
    ``bar``. Returns the split's manifest entry and how many samples were written now."""
    split, out = writer.split, writer.root
    skip = writer.samples_done
    if skip:
        log.info("prepare: %s resumes after %d complete shards", split, writer.index)
    task = bar.add_task(split, total=len(items), completed=skip)
    for i in range(skip, len(items)):
        ext, payload = items[i].load()
        writer.write(sample_key(split, i), {ext: payload, "cls": b"%d" % items[i].label})
        bar.advance(task)
    records = writer.finish()
    if sum(r["count"] for r in records) != len(items):
        raise DataError(
            f"{out}: split {split} has {sum(r['count'] for r in records)} samples in "
            f"shards, the source has {len(items)} (journal out of date?); rerun with "
            "overwrite=true"
        )
    return split_entry(records), len(items) - skip


def _publish(
    out: Path, manifest: dict[str, Any], journal: Journal, name: str | None, seconds: float,
    written: int,
) -> dict[str, Any]:  # fmt: skip
    """Write the shard set's ``manifest`` (the set is complete from then on), drop the journal
    and any file of this layer the manifest does not list, log what the set holds (``written``
    samples now, in ``seconds``), and return the manifest as read back."""
    splits = manifest["splits"]
    write_json_atomic(out / MANIFEST, manifest)
    journal.remove()
    listed = {n for e in splits.values() for n in e["shards"]} | {MANIFEST}
    remove_shard_set(out, keep=listed)  # leftovers of an abandoned other-config run
    total = sum(e["count"] for e in splits.values())
    size = sum(sum(e["shard_bytes"]) for e in splits.values())
    log.info(
        "prepare: %s -> %s: %s samples (%s), %d shards, %.1f MB, %.1f s (%d written now, %.0f img/s)",
        name,
        out,
        total,
        ", ".join(f"{s} {e['count']}" for s, e in splits.items()),
        sum(len(e["shards"]) for e in splits.values()),
        size / 1e6,
        seconds,
        written,
        written / max(seconds, 1e-9),
    )
    return read_manifest(out)


def default_out_dir(cfg: Any) -> Path:
    """``out_dir`` if set, else ``data.root``, else ``outputs/shards/<source name>``."""
    if cfg.get("out_dir"):
        return Path(cfg.out_dir)
    if cfg.data.get("root"):
        return Path(cfg.data.root)
    return Path("outputs") / "shards" / str(cfg.data.source.name)


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
    def cli(cfg: DictConfig) -> None:
        out = default_out_dir(cfg)
        if cfg.data.source.name == "imagefolder":
            log.info("prepare: %s", folder_dirs(cfg.data.source).note())
        manifest = prepare_shards(
            cfg.data.source, out, overwrite=bool(cfg.overwrite), progress=bool(cfg.progress)
        )
        counts = {s: e["count"] for s, e in manifest["splits"].items()}
        print(f"shards: {manifest['root']}  {counts}")

    cli()


if __name__ == "__main__":
    main()
