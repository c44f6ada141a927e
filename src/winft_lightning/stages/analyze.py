"""Teacher over every split -> AWD windows per alpha + DIP order beside each image (the job of
``python -m winft_lightning.analyze teacher_ckpt=CKPT data=NAME``, :mod:`winft_lightning.analyze`).

Each input shard becomes one output shard of the same name holding the original members plus
``awd.aXXXX.i16z`` (``[N, 4]`` int16 per alpha) and ``dip_order.i16z`` (``[N]`` int16), and
their retrained controls (:mod:`winft_lightning.data.masks`): ``awd_random.aXXXX.i16z`` and
``dip_order_random.i16z`` (SPEC 9), ``awd_centred.aXXXX.i16z`` and ``dip_order_blank.i16z``
(SPEC 10). The images are decoded in the analyzed view in 0..1 (the blank order's pixels) and
normalised for the teacher on the device, as the claims pass does.
U is computed streaming, block by block, batched, on the GPU when there is one; no N x N
matrix is stored. Completed shards are journalled, so a killed run resumes after them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from winft_lightning.core.analysis import analyze
from winft_lightning.core.interactions import Grid
from winft_lightning.data.loading import SampleDecoder, collate
from winft_lightning.data.masks import (
    CONTROL_MEMBERS,
    CONTROLS,
    ENCODINGS,
    MASK_FORMAT,
    ORDER,
    WINDOWS,
    MaskStats,
    awd_member,
    blank_orders,
    check_alphas,
    control_arrays,
    dip_member,
    encode_mask,
    mask_names,
)
from winft_lightning.data.progress import image_progress
from winft_lightning.data.shards import (
    JOURNAL,
    MANIFEST,
    SPLITS,
    Journal,
    base_manifest,
    check_crc,
    finished_set,
    iter_tar,
    read_manifest,
    split_entry,
    write_json_atomic,
    write_shard,
)
from winft_lightning.models.teacher import TeacherInfo, load_teacher, teacher_norm
from winft_lightning.runtime.files import CODE_VERSION
from winft_lightning.runtime.hashing import json_digest
from winft_lightning.runtime.world import World

log = logging.getLogger(__name__)

__all__ = ["analyze_shards", "analyze_split", "analyzed_dir"]


def analyze_split(
    model: nn.Module,
    loader: Iterable[dict],
    alphas: Sequence[float],
    grid: Grid,
    device: str | torch.device = "cpu",
    norm: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Iterator[tuple[str, dict[float, np.ndarray], np.ndarray, np.ndarray | None]]:
    """For each image of each batch ``{"image" [B,3,H,W], "key"}``: ``(key, {alpha: windows
    [N, 4] int16}, dip_order [N] int16, blank order [N] int16 or None)``, from
    :func:`analysis.analyze` (U computed block by block) on ``device``. ``norm`` ``(mean,
    std)``: the batches carry the analyzed view in 0..1, normalised here for the teacher
    (``TF.normalize``, as the decoder would), and each image's blank control order
    (:func:`data.masks.blank_orders`) comes with it; None: the batches are the teacher's input
    and there is no blank order."""
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        blank = None
        if norm is not None:
            blank = blank_orders(images, batch["key"], grid).to(torch.int16).cpu().numpy()
            images = TF.normalize(images, list(norm[0]), list(norm[1]))
        result = analyze(model, images, alphas, grid)  # U [B, N, N] -> windows, DIP order
        order = result.order.to(torch.int16).cpu().numpy()
        wins = {a: w.to(torch.int16).cpu().numpy() for a, w in result.windows.items()}
        del result
        for i, key in enumerate(batch["key"]):
            yield (
                key,
                {a: wins[a][i] for a in alphas},
                order[i],
                None if blank is None else blank[i],
            )


def alphas_hash(alphas: Sequence[float]) -> str:
    return json_digest([float(a) for a in alphas], length=8)


def analyzed_dir(shards: str | Path, teacher_sha256: str, alphas: Sequence[float]) -> Path:
    """Default output: ``<shards>/analyzed/<teacher sha[:12]>-<alphas hash>``."""
    return Path(shards) / "analyzed" / f"{teacher_sha256[:12]}-{alphas_hash(alphas)}"


def mask_members(
    key: str,
    wins: dict[float, np.ndarray],
    order: np.ndarray,
    blank: np.ndarray,
    alphas: Sequence[float],
    encoding: str,
    grid: Grid,
) -> dict[str, bytes]:
    """Shard members of one image's masks and their controls (``blank``: its blank order;
    the random ones seeded by its ``key``; see :mod:`winft_lightning.data.masks`)."""
    out = {awd_member(a, encoding): encode_mask(wins[a], encoding) for a in alphas}
    out[dip_member(encoding)] = encode_mask(order, encoding)
    controls = control_arrays(key, {a: wins[a] for a in alphas}, blank, grid)
    out |= {f"{name}.{encoding}": encode_mask(arr, encoding) for name, arr in controls.items()}
    return out


def _batches(
    samples: list[tuple[str, dict]], shard: str, decoder: SampleDecoder, bs: int, pool
) -> Iterator[dict]:
    def decode(item: tuple[str, dict]) -> dict:
        key, members = item
        check_crc(shard, key, members)
        return decoder({"__key__": key, "__shard__": shard, "__seed__": 0, "members": members})

    for i in range(0, len(samples), bs):
        yield collate(list(pool.map(decode, samples[i : i + bs])))


@dataclass(frozen=True)
class MaskJob:
    """One mask set's inputs, checked: the source manifest ``src``, the teacher ``model`` (eval
    mode, on ``device``) with its ``info``, the view's ``mean``/``std``, the ``alphas`` and
    member ``encoding``, the output dir ``out`` (made) and the set's ``fingerprint`` (of the
    source, the teacher file, the alphas, the view, the encoding and the mask format)."""

    src: dict[str, Any]
    model: nn.Module
    info: TeacherInfo
    device: torch.device
    mean: list[float]
    std: list[float]
    alphas: list[float]
    encoding: str
    out: Path
    fingerprint: str

    @property
    def tasks(self) -> list[tuple[str, str, int]]:
        """``(split, shard name, sample count)`` of every source shard, split by split."""
        return [
            (split, name, count)
            for split in SPLITS
            for name, count in zip(
                self.src["splits"][split]["shards"],
                self.src["splits"][split]["shard_counts"],
                strict=True,
            )
        ]


def open_job(
    teacher: str | Path,
    shards: str | Path,
    out_dir: str | Path | None,
    alphas: Sequence[float],
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    device: str,
    teacher_kwargs: dict[str, Any] | None,
    teacher_sha256: str | None,
    encoding: str,
    world: World,
) -> MaskJob:
    """Check the options, read the source manifest, load the teacher (``device="auto"``: this
    rank's GPU when there is one) and make the output dir: the :class:`MaskJob` of
    :func:`analyze_shards`'s arguments."""
    alphas = check_alphas(list(alphas))
    if encoding not in ENCODINGS:
        raise ValueError(f"analyze encoding={encoding!r} is not one of {ENCODINGS}")
    src = read_manifest(shards)
    if device == "auto":
        device = f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    model, info = load_teacher(teacher, device=dev, sha256=teacher_sha256, **(teacher_kwargs or {}))
    mean, std = teacher_norm(model, info, mean, std)
    out = Path(out_dir) if out_dir else analyzed_dir(src["root"], info.sha256, alphas)
    out = out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    fp = json_digest(
        [src["fingerprint"], src["created"], info.sha256, alphas, mean, std, encoding, MASK_FORMAT]
    )
    return MaskJob(src, model, info, dev, mean, std, alphas, encoding, out, fp)


def plan_shards(
    job: MaskJob, journal: Journal, world: World
) -> tuple[list[tuple[str, str, int]], dict[str, dict[str, Any]]]:
    """This rank's share of the source shards (every ``world_size``-th task, from its
    ``rank``) and the records of those its ``journal`` says are written already (by name)."""
    tasks = job.tasks
    mine = tasks[world.rank :: world.world_size]
    done_before = {r["name"]: r for split in SPLITS for r in journal.done(split)}
    log.info(
        "analyze: rank %d of %d analyzes %d of %d shards: %s",
        world.rank, world.world_size, len(mine), len(tasks), [t[1] for t in mine],
    )  # fmt: skip
    return mine, done_before


def analyze_mine(
    job: MaskJob,
    mine: list[tuple[str, str, int]],
    done_before: dict[str, dict[str, Any]],
    journal: Journal,
    *,
    batch_size: int,
    workers: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], MaskStats, int]:
    """Write each of ``mine`` (``(split, name, count)``) into ``job.out`` with its masks beside
    each image, journalled shard by shard; a shard in ``done_before`` is kept as it is.
    Returns the ``{"split", **shard record}`` of each, the mask members' byte counts of the
    shards written now, and their image count."""
    decoder = SampleDecoder(  # the 0..1 view: the blank order's pixels (normalised on device)
        img_size=job.info.img_size,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        num_classes=int(job.src["num_classes"]),
    )
    stats = MaskStats(job.alphas, job.encoding)
    done = 0
    records: list[dict[str, Any]] = []
    with (
        image_progress(disable=not progress) as bar,
        ThreadPoolExecutor(max(workers, 1)) as pool,
    ):
        task_bar = bar.add_task("shards", total=sum(c for _, _, c in mine))
        for split, name, count in mine:
            if name in done_before:
                records.append({"split": split, **done_before[name]})
                bar.advance(task_bar, count)
                continue
            shard = str(Path(job.src["root"]) / name)
            samples = list(iter_tar(shard, count))
            batches = _batches(samples, shard, decoder, batch_size, pool)
            results = analyze_split(job.model, batches, job.alphas, job.info.grid, job.device,
                                    norm=(job.mean, job.std))  # fmt: skip

            def analyzed(samples=samples, results=results, shard=shard):
                for (key, members), (rkey, wins, order, blank) in zip(
                    samples, results, strict=True
                ):
                    if key != rkey:  # pragma: no cover - analyze_split keeps batch order
                        raise RuntimeError(f"analysis out of order at {shard}: {key} vs {rkey}")
                    new = {k: v for k, v in members.items() if k != "crc"}
                    new |= mask_members(
                        key, wins, order, blank, job.alphas, job.encoding, job.info.grid
                    )
                    stats.add(new)
                    bar.advance(task_bar)
                    yield key, new

            record = write_shard(job.out, name, analyzed())
            journal.add(split, record)
            records.append({"split": split, **record})
            done += record["count"]
    return records, stats, done


def mask_manifest(
    job: MaskJob, gathered: list[dict[str, Any]], storage: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """The mask set's manifest from every rank's ``gathered`` part (its shard records, in
    rank order) and the merged byte counts' ``storage`` report."""
    src, info, alphas, encoding = job.src, job.info, job.alphas, job.encoding
    by_name = {r["name"]: r for part in gathered for r in part["records"]}
    splits = {
        split: split_entry([by_name[name] for name in src["splits"][split]["shards"]])
        for split in SPLITS
    }
    return base_manifest(
        kind="masks",
        source=src.get("source"),
        fingerprint=job.fingerprint,
        classes=src["classes"],
        num_classes=src["num_classes"],
        splits=splits,
        parent={"root": src["root"], "fingerprint": src.get("fingerprint")},
        teacher={k: v for k, v in info.as_dict().items() if k != "path"} | {"path": info.path},
        view={
            "img_size": info.img_size,
            "resize": "shorter side + centre crop",
            "mean": list(job.mean),
            "std": list(job.std),
        },
        alphas=alphas,
        mask_members={
            "awd": {str(a): awd_member(a, encoding) for a in alphas},
            "dip_order": dip_member(encoding),
            "encoding": encoding,
            "controls": {  # each control's members: those it replaces (data.masks)
                c: ({str(a): mask_names(a, c)[0] for a in alphas} if WINDOWS in kinds else {})
                | ({"dip_order": mask_names(alphas[0], c)[1]} if ORDER in kinds else {})
                for c, kinds in CONTROL_MEMBERS.items()
            },
        },
        controls=list(CONTROLS),
        mask_format=MASK_FORMAT,
        code_version=CODE_VERSION,
        mask_bytes_per_image=storage["mask_bytes_per_image"],
        bitpacked_mask_bytes_per_image=storage["bitpacked_mask_bytes_per_image"],
        mask_storage=storage,
        analyze_seconds=round(seconds, 2),
        device=str(job.device),
        ranks={str(r): [rec["name"] for rec in part["records"]] for r, part in enumerate(gathered)},
    )


def publish(
    job: MaskJob,
    gathered: list[dict[str, Any]],
    stats: MaskStats,
    seconds: float,
    journal: Journal,
    world: World,
) -> dict[str, Any]:
    """Rank 0's last step: merge the other ranks' byte counts into ``stats``, write the
    manifest (the set is complete from then on), drop every rank's journal, log what was
    done in ``seconds``, and return the manifest as read back."""
    for part in gathered[1:]:
        stats.merge(part["stats"])
    done = sum(part["done"] for part in gathered)
    n = job.info.grid[0] * job.info.grid[1]
    storage = stats.report(n, job.alphas)
    write_json_atomic(job.out / MANIFEST, mask_manifest(job, gathered, storage, seconds))
    journal.remove()
    for leftover in job.out.glob(".journal*.json"):
        leftover.unlink()  # the other ranks' journals: their shards are in the manifest now
    info = job.info
    log.info(
        "analyze: %s -> %s with %s (%s, grid %s): %d images now in %.1f s (%.1f img/s) on %s x %d",
        job.src["root"], job.out, info.model_name, info.sha256[:12], info.grid, done, seconds,
        done / max(seconds, 1e-9), job.device, world.world_size,
    )  # fmt: skip
    log.info(
        "analyze: mask keys %.0f B/image (%d alphas + DIP order, in tar %.0f B) vs one N x N "
        "bit-packed mask %d B at N=%d: %.1fx smaller (per alpha incl. DIP: >= %.1fx)",
        storage["mask_bytes_per_image"],
        len(job.alphas),
        storage["mask_tar_bytes_per_image"],
        storage["bitpacked_mask_bytes_per_image"],
        n,
        storage["ratio_one_bitpacked_mask_to_all_mask_keys"],
        storage["ratio_per_alpha_min"],
    )
    return read_manifest(job.out)


def analyze_shards(
    teacher: str | Path,
    shards: str | Path,
    out_dir: str | Path | None = None,
    alphas: Sequence[float] = (0.1,),
    batch_size: int = 64,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str = "auto",
    teacher_kwargs: dict[str, Any] | None = None,
    teacher_sha256: str | None = None,
    encoding: str = "i16z",
    workers: int = 2,
    progress: bool = True,
    world: World | None = None,
) -> dict[str, Any] | None:
    """Analyze every split of the shard set ``shards`` with ``teacher``; returns the new
    manifest. The view is the teacher's: resize to its img_size + centre crop, normalised with
    ``mean``/``std`` (default: :func:`models.teacher.teacher_norm`). ``teacher_sha256``: the
    teacher file's digest when the caller has it (the pipeline), else it is hashed here.

    In a ``world`` of several ranks each rank analyzes every ``world_size``-th shard into
    ``out_dir`` (a shared directory) and rank 0 writes the one manifest once all are done;
    the other ranks return ``None``.

    The steps: :func:`open_job` (check, load the teacher), a finished set of the same
    fingerprint is returned as it is, :func:`plan_shards` (this rank's shards, the journalled
    ones skipped), :func:`analyze_mine` (write them), then rank 0's :func:`publish`."""
    world = world or World()
    job = open_job(
        teacher, shards, out_dir, alphas, mean=mean, std=std, device=device,
        teacher_kwargs=teacher_kwargs, teacher_sha256=teacher_sha256, encoding=encoding,
        world=world,
    )  # fmt: skip
    done = finished_set(
        job.out, job.fingerprint, "analyze", "teacher/shards/alphas",
        "choose another out_dir or delete it",
    )  # fmt: skip
    if done is not None:
        return done
    # one journal per rank: a killed run resumes after each rank's finished shards
    name = f"{job.fingerprint}-{world.rank}-{world.world_size}"
    journal = Journal(job.out, name, _journal_name(world))
    if journal.stale:
        log.warning("analyze: discarding the unfinished mask set of another config in %s", job.out)
    mine, done_before = plan_shards(job, journal, world)
    start = time.perf_counter()
    records, stats, count = analyze_mine(
        job, mine, done_before, journal, batch_size=batch_size, workers=workers, progress=progress
    )
    gathered = world.gather(
        "analyze/shards", {"records": records, "stats": stats.state(), "done": count}
    )
    if not world.is_zero:
        journal.remove()
        return None
    return publish(job, gathered, stats, time.perf_counter() - start, journal, world)


def _journal_name(world: World) -> str:
    return JOURNAL if not world.distributed else f".journal.rank{world.rank}.json"
