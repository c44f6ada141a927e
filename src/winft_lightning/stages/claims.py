"""The training-free claims of SPEC.md 8, measured as SPEC 9 asks, on one trained teacher:
one pass over a shard set's test split that keeps every per-image value as a column.

:func:`collect_claims` streams the test split (or its first ``limit`` images, in stream order)
in the analyzed view (the teacher's ``img_size``, resize + centre crop, the teacher's
normalisation), in batches. Per batch: U, the DIP order, rollout and the last block's CLS
attention from :func:`analysis.analyze` on the timm teacher; the same weights built three times
with :func:`models.build_vit` (full attention; ``attn="awd"``; ``dip="multiply"``) give the
per-image correctness under every condition. Each random draw comes from its own seeded
``torch.Generator`` (the random U', C2's windows, C3's random order), consumed in batch order,
then alpha / beta order, so one seed gives the same values on a rerun. The C3 baselines'
ties (blank patches share a score) follow a permutation drawn per image from its key and the
seed (SPEC 10), whatever the batching; DIP's own order keeps SPEC 3's ties by index.

The columns (one value per image, named by :func:`~winft_lightning.core.claims_table.column`)
are what the report is rebuilt from: :mod:`winft_lightning.core.claims_table` turns them into
intervals and verdicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from winft_lightning.core import baselines as B
from winft_lightning.core import claims as C
from winft_lightning.core import interactions as ia
from winft_lightning.core.analysis import analyze
from winft_lightning.core.capture import embed_tokens
from winft_lightning.core.claims_table import ORDERINGS, column
from winft_lightning.core.interactions import Grid
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.data.progress import image_progress
from winft_lightning.models import build_vit
from winft_lightning.models.dropped import forward_kept, supports_forward_kept
from winft_lightning.models.teacher import TeacherError, TeacherInfo, load_teacher, teacher_norm
from winft_lightning.runtime.checkpoints import checkpoint_format, read_checkpoint
from winft_lightning.runtime.machine import trim_heap

__all__ = ["collect_claims", "forwards_per_image", "keep_chance"]


def _generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator for one kind of random draw, seeded from ``(seed, stream)``."""
    state = int(np.random.SeedSequence([int(seed), stream]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state & ((1 << 63) - 1))


def _nets(
    ckpt: Path, device: torch.device, net: dict[str, Any] | None = None
) -> tuple[dict[str, torch.nn.Module], dict]:
    """The teacher's weights as build_vit networks: full, AWD-restricted, DIP-multiplied. The
    architecture is the checkpoint's ``hyper_parameters.net`` (a Lightning checkpoint of our
    modules) or, for a plain weights file, ``net`` (timm's name, img_size, patch_size, ...)."""
    obj = read_checkpoint(ckpt) if checkpoint_format(ckpt) == "torch" else None
    hp = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    if isinstance(hp, dict) and isinstance(hp.get("net"), dict):
        net = hp["net"]
    elif not net:
        raise TeacherError(
            f"{ckpt} is not a Lightning checkpoint with hyper_parameters.net: give its net config "
            "(model_name, img_size, patch_size, num_classes, ...) to read it as plain weights"
        )
    net = {k: v for k, v in net.items() if k not in ("attn", "dip", "checkpoint", "pretrained")}
    # the weights come from ckpt: how fresh weights were drawn (init "mimetic") is not built
    arch = {k: v for k, v in net.items() if k not in ("init", "init_options")}
    kinds = {"full": {}, "awd": {"attn": "awd"}, "dip": {"dip": "multiply"}}
    nets = {
        k: build_vit(**arch, **kw, checkpoint=str(ckpt)).eval().to(device)
        for k, kw in kinds.items()
    }
    return nets, net


def _kept(windows: Tensor, n: int) -> Tensor:
    """Fraction of the N^2 interactions the windows keep, per image ``[B]`` float64."""
    return ia.window_areas(windows).sum(dim=1).double() / n**2


def _orders(res, x01: Tensor, grid: Grid, gen: torch.Generator, ties: Tensor | None):
    """Every C3 ordering of one batch, ascending (the first are dropped lowest-first). The
    baselines' ties follow ``ties`` (a permutation per image, SPEC 10; None: by index); DIP's
    own order is ``interactions.dip_order``'s (SPEC 3: ties by index)."""
    return {
        "variance": res.order,
        "blank": B.ascending_order(B.blank_scores(x01, grid), ties),
        "rollout": B.ascending_order(res.rollout, ties),
        "cls": B.ascending_order(res.cls_attention, ties),
        "random": B.random_order(x01.shape[0], grid[0] * grid[1], gen),
    }


def field_columns(add, order: Tensor, hits: dict, null: dict, x01: Tensor, grid: Grid,
                  opts: dict) -> None:  # fmt: skip
    """C1b's and the keep fraction's per-image values from U' (``hits``) and the random U'
    (``null``) per alpha, DIP's ``order`` and the images ``x01``, each handed to ``add(name,
    value)``: object_fraction, gap, gap_null, kept:a, kept_null:a. Shared by the claims pass
    and the randomisation null (:mod:`.null_claims`)."""
    n, la = grid[0] * grid[1], opts["locality_alpha"]
    obj = C.object_patch_mask(x01, grid, opts["object_threshold"])
    add("object_fraction", obj.double().mean(dim=1))
    both = ((obj.sum(dim=1) > 0) & ((~obj).sum(dim=1) > 0)).cpu()  # images C1b can use
    for name, h in (("gap", hits[la]), ("gap_null", null[la])):
        field = ia.responsive_field(ia.windows_from_hits(h, grid), order, 0.0, grid)
        gap = torch.full((x01.shape[0],), float("nan"), dtype=torch.float64)
        gap[both] = C.field_size_gap(ia.field_size(field, grid), obj).gap.cpu()
        add(name, gap)
    for a in opts["keep_alphas"]:
        add(column("kept", a), _kept(ia.windows_from_hits(hits[a], grid), n))
        add(column("kept_null", a), _kept(ia.windows_from_hits(null[a], grid), n))


def _batch(cols, nets, teacher, x01, labels, norm, opts, gens, grid, ties) -> None:
    """Every per-image value of one batch (``x01`` the analyzed view in 0..1) into ``cols``;
    ``ties``: the C3 baselines' tie-breaking permutations (:func:`_orders`)."""

    def add(name: str, value: Tensor) -> None:
        cols.setdefault(name, []).append(value.detach().cpu().numpy())

    x = TF.normalize(x01, *norm)  # as SampleDecoder normalises: the teacher's exact input
    wanted = sorted({*opts["alphas"], opts["locality_alpha"], *opts["keep_alphas"]})
    res = analyze(teacher, x, wanted, grid, rollout=True, distances=True)
    hits = {a: ia.top_interactions(res.u, a) for a in wanted}
    null = {a: B.random_u_hits(hits[a], gens["null"]) for a in wanted}
    la = opts["locality_alpha"]
    add("locality", B.locality_index(hits[la], grid))
    add("hit_distance", B.hit_distance(hits[la], grid))
    for block in range(res.attention_distance.shape[1]):
        for head in range(res.attention_distance.shape[2]):
            add(column("attn_distance", block, head), res.attention_distance[:, block, head])
    add("locality_null", B.locality_index(null[la], grid))
    field_columns(add, res.order, hits, null, x01, grid, opts)
    add("correct:full", C.per_image_correct(nets["full"], x, labels))
    for a in opts["alphas"]:
        win = res.window(a)
        controls = {
            "awd": win,
            "random": C.random_windows_like(win, grid, gens["c2"]),
            "centred": C.centred_windows_like(win, grid),
        }
        for name, w in controls.items():
            add(column("correct", name, a), C.per_image_correct(nets["awd"], x, labels, windows=w))
    orders = _orders(res, x01, grid, gens["c3"], ties)
    dip = _dip_correct(nets["dip"], x, labels, opts["dip_forward"])
    for ordering in ORDERINGS:
        for direction, drop in (("lowest", B.drop_lowest), ("highest", B.drop_highest)):
            for b in opts["betas"]:
                add(column("correct", ordering, direction, b), dip(drop(orders[ordering], b)))
    add("label", labels)


def _dip_correct(net, x: Tensor, labels: Tensor, how: str) -> Callable[[Tensor], Tensor]:
    """``keep [B, N] -> [B]`` bool: the DIP network's per-image correctness with those patches
    kept. ``how`` "kept": :func:`models.dropped.forward_kept`, on the batch's tokens embedded
    once (the dropped patches' tokens left out: about half the cost at the claims' betas);
    "dense": the network's own forward over all N patches (the reference it equals)."""
    if how == "dense" or not supports_forward_kept(net):
        return lambda keep: C.per_image_correct(net, x, labels, keep=keep)
    tokens = embed_tokens(net, x)

    def correct(keep: Tensor) -> Tensor:
        logits = forward_kept(net, x, keep, tokens=tokens)
        return (logits.argmax(dim=-1) == labels.to(logits.device)).cpu()

    return correct


def collect_claims(
    teacher_ckpt: str | Path,
    shards_root: str | Path,
    *,
    alphas: Sequence[float] = (0.05, 0.1, 0.2),
    betas: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    keep_alphas: Sequence[float] = (0.05, 0.1, 0.2),
    locality_alpha: float = 0.1,
    object_threshold: float = 0.1,
    batch_size: int = 250,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = False,
    device: str = "auto",
    num_workers: int = 0,
    teacher_sha256: str | None = None,
    net: dict[str, Any] | None = None,
    ties: str = "key",
    dip_forward: str = "kept",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One pass over the test split (or its first ``limit`` images, in stream order):
    ``(columns, facts)``: ``columns`` maps each per-image value's name to an ``[n]`` array
    (``key`` the image keys); facts = what the pass ran on (teacher, view, grid, seconds).
    ``device`` "auto": CUDA when present. ``teacher_sha256``: the teacher file's digest when
    the caller has it, else it is hashed here. ``net``: the architecture of a plain weights
    file (a Lightning checkpoint of our modules carries its own). ``ties``: how the C3
    baselines break ties, "key" (SPEC 10: a random permutation per image seeded by its key and
    ``seed``) or "index" (SPEC 9's passes: by patch index)."""
    opts = _pass_options(alphas, betas, keep_alphas, locality_alpha, object_threshold, ties,
                         dip_forward)  # fmt: skip
    start = time.perf_counter()
    ckpt = Path(teacher_ckpt).expanduser()
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    teacher, info = load_teacher(ckpt, device=dev, sha256=teacher_sha256, **(net or {}))
    if net:  # a plain file's classes are its head's (load_teacher read them from the file)
        net = {**net, "num_classes": info.num_classes}
    nets, net_hp = _nets(ckpt, dev, net)
    if not supports_forward_kept(nets["dip"]):  # e.g. a pooled head: the facts say what ran
        dip_forward = "dense"
    mean, std = teacher_norm(teacher, info)
    dm, total = _test_split(ckpt, info, shards_root, batch_size, num_workers, limit)
    gens = {k: _generator(seed, i, dev) for i, k in enumerate(("null", "c2", "c3"))}
    n = info.grid[0] * info.grid[1]

    def measure(cols: dict[str, list[np.ndarray]], x01: Tensor, labels: Tensor, keys) -> None:
        perm = (None if ties == "index" else
                B.tie_permutations([B.key_seed(k, seed) for k in keys], n, dev))  # fmt: skip
        _batch(cols, nets, teacher, x01, labels, (mean, std), opts | {"dip_forward": dip_forward},
               gens, info.grid, perm)  # fmt: skip

    columns = _test_pass(dm, total, measure, dev, progress)
    seconds = time.perf_counter() - start
    settings = dict(opts, batch_size=int(batch_size), seed=int(seed), limit=limit, ties=ties)
    view = {"img_size": info.img_size, "resize": "shorter side + centre crop",
            "mean": list(mean), "std": list(std)}  # fmt: skip
    facts = _pass_facts(ckpt, info, net_hp, dm, len(columns["key"]), view, dev, seconds)
    return columns, facts | {"settings": settings, "c3_ties": ties, "dip_forward": dip_forward}


def _pass_options(alphas, betas, keep_alphas, locality_alpha, object_threshold, ties,
                  dip_forward) -> dict[str, Any]:  # fmt: skip
    """The pass's per-image options as floats (what its settings record), checked before any
    work: every beta in [0, 1), ``ties`` "key" or "index", ``dip_forward`` "kept" or
    "dense"."""
    opts = dict(alphas=[float(a) for a in alphas], betas=[float(b) for b in betas],
                keep_alphas=[float(a) for a in keep_alphas],
                locality_alpha=float(locality_alpha), object_threshold=float(object_threshold))  # fmt: skip
    for b in opts["betas"]:
        ia.check_beta(b, "claims.betas")
    if ties not in ("key", "index"):
        raise ValueError(f"claims.ties must be 'key' or 'index', got {ties!r}")
    if dip_forward not in ("kept", "dense"):
        raise ValueError(f"dip_forward must be 'kept' or 'dense', got {dip_forward!r}")
    return opts


def _pass_facts(
    ckpt: Path, info: TeacherInfo, net_hp: Any, dm: ShardDataModule, images: int,
    view: dict[str, Any], dev: torch.device, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """What a pass of ``images`` test images ran on: the teacher, the shard set, the view, the
    grid, the device and its threads, and the pass's ``seconds``."""
    grid = info.grid
    return {
        "teacher": {"path": str(ckpt), "sha256": info.sha256, "model_name": info.model_name,
                    "net": net_hp, "img_size": info.img_size, "patch_size": info.patch_size},
        "shards_root": str(dm.manifest["root"]),
        "source": dm.manifest.get("source"),
        "split": "test",
        "split_images": dm.counts["test"],
        "images": images,
        "view": view,
        "grid": list(grid),
        "N": grid[0] * grid[1],
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "measure_seconds": round(seconds, 2),
    }  # fmt: skip


def _test_split(
    ckpt: Path, info: TeacherInfo, shards_root: str | Path, batch_size: int, num_workers: int,
    limit: int | None,
) -> tuple[ShardDataModule, int]:  # fmt: skip
    """The shard set's test split in the teacher's view, unnormalised (the 0..1 pixels C1b and
    the blank order need), and how many of its images the pass reads (``limit``: the first
    ones); refused when its classes are not the teacher's or fewer than 2 images are read."""
    dm = ShardDataModule(
        shards_root, batch_size=batch_size, num_workers=num_workers, img_size=info.img_size,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), hflip=False,
    )  # fmt: skip  # mean 0 / std 1: the 0..1 pixels C1b and the blank order need
    if dm.num_classes != info.num_classes:
        raise ValueError(
            f"teacher {ckpt} has {info.num_classes} classes, shard set {dm.manifest['root']} "
            f"has {dm.num_classes}"
        )
    total = dm.counts["test"] if limit is None else min(int(limit), dm.counts["test"])
    if total < 2:
        raise ValueError(f"the claims need at least 2 test images, got {total} (limit={limit})")
    return dm, total


def _test_pass(
    dm: ShardDataModule, total: int, measure: Callable, dev: torch.device, progress: bool
) -> dict[str, np.ndarray]:
    """The first ``total`` test images of ``dm`` through ``measure(cols, x01 [B,3,H,W] on
    ``dev``, labels [B], the images' keys)``, which appends each per-image value to
    ``cols[name]``: the columns, each an ``[total]`` array, with the images' ``key``."""
    cols: dict[str, list[np.ndarray]] = {}
    keys: list[str] = []
    with torch.inference_mode(), image_progress(disable=not progress) as bar:
        task = bar.add_task("claims", total=total)
        for batch in dm.make_loader("test", rank=0, world_size=1):
            take = min(total - len(keys), batch["image"].shape[0])
            x01 = batch["image"][:take].to(dev)
            labels = batch["label"][:take].to(dev)
            measure(cols, x01, labels, list(batch["key"][:take]))
            keys += list(batch["key"][:take])
            trim_heap()
            bar.advance(task, take)
            if len(keys) >= total:
                break
    return {"key": np.asarray(keys), **{k: np.concatenate(v) for k, v in cols.items()}}


def forwards_per_image(alphas: Sequence[float], betas: Sequence[float]) -> int:
    """Network forwards one image costs in :func:`collect_claims`: the analysis (non-fused,
    maps kept), the full net, C2's three windows per alpha, and each C3 ordering both ways per
    beta. What a projection of the pass's time multiplies by one forward's time."""
    return 2 + 3 * len(alphas) + 2 * len(ORDERINGS) * len(betas)


def keep_chance(grid: Grid, alpha: float, images: int = 64, seed: int = 0) -> dict[str, Any]:
    """The keep fraction of a U with no structure (i.i.d. uniform entries, seeded), by the same
    code as the teacher's (``awd_windows``, then window-mask count / N^2): the chance level
    of a grid and alpha, e.g. the paper's N = 196 at alpha 0.1. Mean and range over
    ``images`` draws."""
    n = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(seed)
    kept = torch.cat([
        _kept(ia.awd_windows(torch.rand(8, n, n, generator=gen), alpha, grid), n)
        for _ in range(max(1, images // 8))
    ])  # fmt: skip
    return {"grid": list(grid), "N": n, "alpha": alpha, "images": int(kept.numel()),
            "mean": float(kept.mean()), "min": float(kept.min()), "max": float(kept.max())}  # fmt: skip
