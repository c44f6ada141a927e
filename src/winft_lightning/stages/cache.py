"""The run's prerequisites as cache entries that build themselves: shards, teacher, masks
(:func:`ensure_shards`, :func:`ensure_teacher`, :func:`ensure_masks`; chained for one job by
:func:`winft_lightning.pipeline.prerequisites`).

Each is an entry of the :class:`~winft_lightning.runtime.store.ArtifactStore` under
``paths.cache_dir``, keyed by the content of what made it (the source config and, for an
ImageFolder tree, the listing of its files; the shard manifest's content hash; the teacher
file's hash), built once however many processes ask for it at the same time, and reused by
every later run (which says so). Inside a torchrun/SLURM world the ranks build together: shards
once, the teacher as one DDP run over every rank, the analysis split over the ranks' shards.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from winft_lightning.data.folder_listing import (
    LISTING_FILE,
    FolderListing,
    describe_changes,
    list_folder,
    load_records,
)
from winft_lightning.data.shards import FORMAT_VERSION, MANIFEST
from winft_lightning.runtime import world as worlds
from winft_lightning.runtime.hashing import json_digest
from winft_lightning.runtime.store import ENTRY, ArtifactStore

log = logging.getLogger(__name__)

# manifest fields that differ between two builds of the same content
_VOLATILE = ("created", "root", "prepare_seconds", "analyze_seconds", "code_version")


def config_key(*parts: Any) -> str:
    """Short stable hash of resolved config fragments."""
    plain = [
        OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p for p in parts
    ]
    return json_digest(plain, length=12)


def manifest_digest(root: Path) -> str:
    """Hash of a shard set's manifest content (its shards, counts, sizes, source), never of the
    folder's name or of when it was built."""
    manifest = json.loads((Path(root) / MANIFEST).read_text())
    content = {k: v for k, v in manifest.items() if k not in _VOLATILE}
    return json_digest(content)


def store_of(cfg: DictConfig) -> ArtifactStore:
    return ArtifactStore(cfg.paths.cache_dir, worlds.current())


def ensure_shards(cfg: DictConfig, source: DictConfig | None = None) -> Path:
    """The run's WebDataset shards: ``data.root`` if given, else built from ``data.source``
    (or from ``source``, e.g. the teacher's)."""
    from winft_lightning.stages.prepare import prepare_shards

    if source is None and cfg.data.get("root"):
        root = Path(cfg.data.root)
        if not (root / MANIFEST).is_file():
            raise FileNotFoundError(f"data.root={root} has no manifest.json (not a shard set)")
        log.info("shards: using data.root=%s", root)
        return root
    source = cfg.data.source if source is None else source
    store = store_of(cfg)
    key = f"{source.name}-{config_key(FORMAT_VERSION, source)}"
    listing = None
    if source.name == "imagefolder":  # fixed-file sources keep their config-only key
        key, listing = _folder_key(store, key, source)

    def build(out: Path) -> dict[str, Any]:
        if listing is not None:
            _log_folder_changes(store, key, listing)
        manifest = prepare_shards(source, out, progress=False)
        info = {"count": {s: e["count"] for s, e in manifest["splits"].items()}}
        if listing is not None:
            listing.save(out / LISTING_FILE)
            info["source_listing"] = listing.summary()
        return info

    return store.ensure("shards", key, build, what="shards", resume=True)


def _folder_key(
    store: ArtifactStore, key: str, source: DictConfig
) -> tuple[str, FolderListing | None]:
    """An ImageFolder source's key also ends in the digest of its tree's listing (paths, sizes,
    mtimes), so a changed tree builds new shards. Rank 0 walks the tree and tells the others."""
    listing = None
    if store.world.is_zero:
        start = time.perf_counter()
        listing = list_folder(OmegaConf.to_container(source, resolve=True))
        log.info("shards: %s", listing.dirs.note())
        log.info(
            "shards: listed %d image files of %s in %.2f s (listing digest %s)",
            len(listing.files()), listing.dirs.root, time.perf_counter() - start,
            listing.digest[:12],
        )  # fmt: skip
    digest = store.world.share("shards/source_listing", listing and listing.digest)
    return f"{key}-{digest[:12]}", listing


def _log_folder_changes(store: ArtifactStore, key: str, listing: FolderListing) -> None:
    """Say what changed in the tree since the newest entry of the same source config."""
    prefix = key.rsplit("-", 1)[0]
    earlier = [
        p
        for p in (store.root / "shards").glob(f"{prefix}-*")
        if (p / ENTRY).is_file() and (p / LISTING_FILE).is_file()
    ]
    if not earlier:
        return
    latest = max(earlier, key=lambda p: (p / ENTRY).stat().st_mtime_ns)
    changes = describe_changes(load_records(latest / LISTING_FILE), listing.records)
    log.info("shards: source changed since %s: %s", latest.name, changes)


def teacher_source(cfg: DictConfig) -> DictConfig | None:
    """``data.source`` with ``teacher.source`` merged over it (e.g. ``{limit: {train: null}}``:
    the teacher trains on every image while the students train on a subset), or None when the
    teacher trains on the run's own shards."""
    override = cfg.teacher.get("source")
    if not override:
        return None
    if cfg.data.get("root") or not cfg.data.get("source"):
        raise ValueError(
            "teacher.source overrides part of data.source, but this run reads data.root="
            f"{cfg.data.get('root')}: give the teacher's shards as teacher.ckpt or drop teacher.source"
        )
    return OmegaConf.merge(cfg.data.source, override)


def ensure_teacher_shards(cfg: DictConfig, shards: Path) -> Path:
    """The shard set the teacher trains and is tested on: the run's ``shards``, or its own
    when ``teacher.source`` is given (the masks are still made on the run's ``shards``)."""
    source = teacher_source(cfg)
    return shards if source is None else ensure_shards(cfg, source)


def teacher_model(cfg: DictConfig) -> dict[str, Any]:
    """``teacher.model`` resolved, with ``teacher.init`` (and ``teacher.init_options``) folded
    into its net as ``build_vit``'s ``init`` / ``init_options`` when the init is not "default",
    ``teacher.attn_bias`` as its ``attn_bias`` when not "none", and ``teacher.param_groups``
    into the module when given: a default teacher's config (and store key) is exactly as before
    any of them existed."""
    model = OmegaConf.to_container(cfg.teacher.model, resolve=True)
    for key, default in (("init", "default"), ("attn_bias", "none")):
        value = cfg.teacher.get(key) or default
        if value != default:
            model["net"][key] = value
    options = cfg.teacher.get("init_options")
    if options:
        model["net"]["init_options"] = OmegaConf.to_container(options, resolve=True)
    groups = cfg.teacher.get("param_groups")
    if groups:  # keyed only when given, as init
        model["param_groups"] = OmegaConf.to_container(groups, resolve=True)
    return model


def teacher_key(cfg: DictConfig, shards: Path) -> str:
    data_opts = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if k != "root"}
    # the teacher reads no masks: which windows a run loads (model.alpha's) is not part of its
    # identity; keyed with alpha=None as when the data config carried it (the same entries)
    data_opts.update(alpha=None, use_masks=False)
    data_opts.pop("control", None)  # nor which masks (the teacher's or a control's) a run reads
    if teacher_source(cfg) is not None:  # the students' own subset is not the teacher's
        data_opts["source"] = OmegaConf.to_container(teacher_source(cfg), resolve=True)
    model = teacher_model(cfg)
    if not model.get("net", {}).get("pretrained", True):
        del model["net"]["pretrained"]  # keyed as before model.net.pretrained existed
    return config_key(
        model,
        cfg.teacher.max_epochs,
        cfg.teacher.get("limit_train_batches"),
        data_opts,
        manifest_digest(shards),
        cfg.teacher.seed,
    )


def ensure_teacher(cfg: DictConfig, shards: Path) -> tuple[Path, dict | None, str]:
    """The teacher checkpoint: ``teacher.ckpt`` if given, else a cached or freshly trained
    baseline ViT (``teacher.model`` for ``teacher.max_epochs``; under DDP one run over every
    rank; a build left by a killed builder resumes from its last finished epoch). Returns
    (path, its results row or None, the file's sha256): the run's one hash of the teacher
    file, handed on to :func:`ensure_masks`."""
    from winft_lightning.runtime.hashing import file_sha256

    if cfg.teacher.get("ckpt"):
        path = Path(cfg.teacher.ckpt)  # its existence: stages.validate.validate_config
        log.info("teacher: using teacher.ckpt=%s", path)
        return path, None, file_sha256(path)
    store = store_of(cfg)
    key = teacher_key(cfg, shards)
    final = store.path("teachers", key)
    trained = int(cfg.teacher.max_epochs) > 0

    def build(out: Path) -> dict[str, Any]:
        L.seed_everything(cfg.teacher.seed, workers=True)
        if trained:
            row = _train_teacher(cfg, shards, out, final)
        else:
            _untrained_teacher(cfg, out / "teacher.ckpt")
            row = None
        if store.world.is_zero and row is not None:
            (out / "results.json").write_text(json.dumps(row, indent=2))
        return {"sha256": file_sha256(out / "teacher.ckpt")} if store.world.is_zero else {}

    # resume: a build a killed builder left resumes from its run's last.ckpt (stages.train's
    # _resume_path: the loaders replay each epoch from its start), not from scratch
    store.ensure("teachers", key, build, what="teacher", collective=trained, resume=True)
    results = final / "results.json"
    row = json.loads(results.read_text()) if results.is_file() else None
    return final / "teacher.ckpt", row, store.record("teachers", key)["info"]["sha256"]


# the groups a teacher job shares with the run that asked for it (how to train and log, on
# which data); their ${paths.output_dir} resolves to the teacher's own run dir
SHARED_GROUPS = ("data", "trainer", "callbacks", "logger", "optimizer")


def teacher_job(cfg: DictConfig, shards: Path, run_dir: Path) -> DictConfig:
    """The teacher's own job config: ``teacher.model`` (resolved where it was composed) for
    ``teacher.max_epochs`` with seed ``teacher.seed``, on the shard set at ``shards``, with the
    run's trainer, callbacks and loggers, writing under ``run_dir``. Handed a path, not the
    student's config: no key of the student's model, seed, run dir or task reaches it."""
    job = {k: OmegaConf.to_container(cfg[k], resolve=False) for k in SHARED_GROUPS if k in cfg}
    job["data"]["root"] = str(shards)
    source = teacher_source(cfg)
    if source is not None:  # what those shards were built from
        job["data"]["source"] = OmegaConf.to_container(source, resolve=True)
    job["trainer"]["max_epochs"] = int(cfg.teacher.max_epochs)
    if cfg.teacher.get("limit_train_batches") is not None:
        job["trainer"]["limit_train_batches"] = cfg.teacher.limit_train_batches
    paths = {k: cfg.paths[k] for k in cfg.paths if k != "output_dir"}
    job.update(
        task_name="teacher",
        tags=[*(cfg.get("tags") or []), "teacher"],
        seed=int(cfg.teacher.seed),
        model=teacher_model(cfg),
        paths={**paths, "output_dir": str(run_dir)},
        train=True,
        test=True,
        ckpt_path=None,
    )
    return OmegaConf.create(job)


def _train_teacher(cfg: DictConfig, shards: Path, out: Path, final: Path) -> dict[str, Any]:
    from winft_lightning.stages.train import fit_and_test

    log.info("teacher: training a baseline ViT for %s epochs -> %s", cfg.teacher.max_epochs, out)
    job = teacher_job(cfg, shards, out / "run")
    if worlds.current().is_zero:
        (out / "run").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(job, out / "run" / "job.yaml")  # what the teacher ran, unresolved
    row = fit_and_test(job, shards, name="teacher ViT")
    if not worlds.current().is_zero:
        return row
    best = Path(row["best_ckpt"]) if row["best_ckpt"] else None
    if best is None or not best.is_file():
        best = out / "run" / "checkpoints" / "last.ckpt"
        if not best.is_file():
            raise RuntimeError(f"teacher training in {out / 'run'} left no checkpoint")
    shutil.copyfile(best, out / "teacher.ckpt")
    # the paths as they read once the entry is published
    return {k: str(v).replace(str(out), str(final)) if k in ("best_ckpt", "run_dir") else v
            for k, v in row.items()}  # fmt: skip


def _untrained_teacher(cfg: DictConfig, ckpt: Path) -> Path:
    """teacher.max_epochs=0: a randomly initialised ViT, saved as a Lightning checkpoint."""
    from winft_lightning.models.teacher import save_untrained

    log.info("teacher: teacher.max_epochs=0, saving a randomly initialised ViT -> %s", ckpt)
    return save_untrained(teacher_model(cfg), ckpt)


def mask_key(cfg: DictConfig, teacher_sha256: str, shards: Path) -> str:
    from winft_lightning.data.masks import MASK_FORMAT

    return config_key(
        teacher_sha256, list(cfg.analyze.alphas), manifest_digest(shards), MASK_FORMAT
    )


def ensure_masks(cfg: DictConfig, teacher: Path, teacher_sha256: str, shards: Path) -> Path:
    """Shards with AWD windows (every ``analyze.alphas``) and DIP order beside each image;
    under DDP each rank analyzes its share of the shards."""
    from winft_lightning.models.teacher import plain_file_net
    from winft_lightning.stages.analyze import analyze_shards

    if cfg.analyze.get("mask_root"):
        root = Path(cfg.analyze.mask_root)
        if not (root / MANIFEST).is_file():
            raise FileNotFoundError(f"analyze.mask_root={root} has no manifest.json")
        log.info("masks: using analyze.mask_root=%s", root)
        return root
    store = store_of(cfg)

    def build(out: Path) -> dict[str, Any]:
        log.info("masks: analysing %s with teacher %s -> %s", shards, teacher, out)
        manifest = analyze_shards(
            teacher=teacher,
            shards=shards,
            out_dir=out,
            alphas=list(cfg.analyze.alphas),
            batch_size=int(cfg.analyze.batch_size),
            teacher_kwargs={
                "trust_pickle": bool(cfg.teacher.get("trust_pickle", False)),
                "trust_option": "teacher.trust_pickle",
                **plain_file_net(OmegaConf.to_container(cfg.model.net, resolve=True)),
            },
            teacher_sha256=teacher_sha256,
            world=store.world,
            progress=False,
        )
        return {"ranks": manifest["ranks"]} if manifest else {}

    key = mask_key(cfg, teacher_sha256, shards)
    return store.ensure("masks", key, build, what="masks", collective=True, resume=True)
