"""The training-free claims stage of SPEC.md 8 (C1, C1b, C2, C3 and "AWD alpha = 0.1 keeps
~23 % of interactions") on a trained teacher, over a shard set's whole test split.

:func:`collect_claims` streams the test split once in the analysed view (the teacher's
``img_size``, resize + centre crop, the teacher's normalisation), in batches, and keeps one
value per image and condition (:class:`PerImage`); :func:`measure_claims` adds the intervals
and verdicts of :mod:`winft_lightning.core.claims_table`; :func:`write_claims` saves ``claims.json``
and the claims figures. Per batch: U from :func:`analysis.analyse` on the timm teacher; the
same weights built three times with :func:`models.build_vit` (full attention; ``attn="awd"``;
``dip="multiply"``) give the per-image correctness under every condition. Every random
control draws from its own seeded ``torch.Generator`` (C1, C2 and C3 each one, seeded from
``seed``, on the compute device), consumed in batch order, then alpha / beta order: the draws
depend on ``seed``, ``batch_size`` and the order of the test split, nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from winft_lightning.core import claims as C
from winft_lightning.core import interactions as ia
from winft_lightning.core.analysis import analyse
from winft_lightning.core.claims_table import KEEP_ALPHA, summarise_claims
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.data.progress import image_progress
from winft_lightning.models import build_vit
from winft_lightning.models.teacher import TeacherError, load_teacher, teacher_norm
from winft_lightning.runtime.checkpoints import read_checkpoint

__all__ = ["PerImage", "collect_claims", "measure_claims", "write_claims"]

Grid = tuple[int, int]
HIST_BIN = 0.25  # grid units per bin of the d_p / r_p histogram


@dataclass
class PerImage:
    """Per-image measurements of one pass (all CPU tensors over the same ``n`` images, in
    stream order, except C1/C1b whose images without an effect are left out and counted).

    ``correct``: ``{condition: [n] bool}``, conditions ``"full"`` (unrestricted),
    ``("awd" | "random" | "centred", alpha)`` (C2) and ``("dip_lowest" | "dip_random" |
    "dip_highest", beta)`` (C3). ``eo_ratio``: ``{alpha: [n]}`` window-mask count / N^2.
    ``ratio``: C1's ``sum d_p / sum r_p`` per image with a valid patch; ``gap``: C1b's object
    minus background mean |S_p|; ``hit_hist`` / ``random_hist``: per-patch d_p and r_p counts
    on ``edges``; ``object_fraction``: ``[n]`` share of object patches."""

    grid: Grid
    n: int = 0
    correct: dict[Any, list[Tensor] | Tensor] = field(default_factory=dict)
    eo_ratio: dict[float, list[Tensor] | Tensor] = field(default_factory=dict)
    ratio: list[Tensor] | Tensor = field(default_factory=list)
    ratio_skipped: int = 0
    gap: list[Tensor] | Tensor = field(default_factory=list)
    gap_skipped: int = 0
    object_fraction: list[Tensor] | Tensor = field(default_factory=list)
    edges: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hit_hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    random_hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    hit_sum: float = 0.0
    random_sum: float = 0.0
    patches: int = 0  # valid (p with |H_p| >= 1) patches in the histogram

    def add(self, key: Any, value: Tensor, into: dict | None = None) -> None:
        (self.correct if into is None else into).setdefault(key, []).append(value.cpu())

    def finish(self) -> PerImage:
        """Concatenate the per-batch lists into one tensor each."""

        def cat(parts):
            return torch.cat(parts) if isinstance(parts, list) and parts else parts

        self.correct = {k: cat(v) for k, v in self.correct.items()}
        self.eo_ratio = {k: cat(v) for k, v in self.eo_ratio.items()}
        self.ratio, self.gap = cat(self.ratio), cat(self.gap)
        self.object_fraction = cat(self.object_fraction)
        return self


def _generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator for one claim's random controls, seeded from ``(seed, stream)``."""
    state = int(np.random.SeedSequence([int(seed), stream]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state & ((1 << 63) - 1))


def _nets(ckpt: Path, device: torch.device) -> tuple[dict[str, torch.nn.Module], dict]:
    """The teacher's weights as build_vit networks: full, AWD-restricted, DIP-multiplied."""
    obj = read_checkpoint(ckpt)
    hp = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    if not (isinstance(hp, dict) and isinstance(hp.get("net"), dict)):
        raise TeacherError(f"{ckpt} is not a Lightning checkpoint with hyper_parameters.net")
    net = {k: v for k, v in hp["net"].items() if k not in ("attn", "dip", "checkpoint")}
    kinds = {"full": {}, "awd": {"attn": "awd"}, "dip": {"dip": "multiply"}}
    nets = {
        k: build_vit(**net, **kw, checkpoint=str(ckpt)).eval().to(device) for k, kw in kinds.items()
    }
    return nets, net


def _locality(per: PerImage, u: Tensor, alpha: float, gen: torch.Generator) -> None:
    """C1 on one batch: per-image ratio (NaN images counted) and the d_p / r_p histograms."""
    ld = C.locality_distances(u, alpha, per.grid, gen)
    valid = ld.count >= 1
    hit = torch.where(valid, ld.hit, 0.0).sum(dim=1)
    rnd = torch.where(valid, ld.random, 0.0).sum(dim=1)
    ratio = hit / rnd  # C.locality_ratio's formula, on the same draws as the histogram
    keep = torch.isfinite(ratio)
    per.ratio.append(ratio[keep].cpu())
    per.ratio_skipped += int((~keep).sum())
    d, r = ld.hit[valid].cpu().numpy(), ld.random[valid].cpu().numpy()
    per.hit_hist += np.histogram(d, per.edges)[0]
    per.random_hist += np.histogram(r, per.edges)[0]
    per.hit_sum, per.random_sum = per.hit_sum + float(d.sum()), per.random_sum + float(r.sum())
    per.patches += int(d.size)


def _batch(per, nets, teacher, x01, labels, norm, opts, gens) -> None:
    """Every measurement of one batch (``x01`` the analysed view in 0..1)."""
    grid, n = per.grid, per.grid[0] * per.grid[1]
    x = TF.normalize(x01, *norm)  # as SampleDecoder normalises: the teacher's exact input
    wanted = sorted({*opts["alphas"], opts["locality_alpha"], KEEP_ALPHA})
    res = analyse(teacher, x, wanted, grid)
    _locality(per, res.u, opts["locality_alpha"], gens["c1"])
    obj = C.object_patch_mask(x01, grid, opts["object_threshold"])
    sizes = ia.field_size(res.field(opts["locality_alpha"], 0.0), grid)
    gap = C.field_size_gap(sizes, obj)
    per.gap.append(gap.gap.cpu())
    per.gap_skipped += gap.skipped
    per.object_fraction.append(obj.double().mean(dim=1).cpu())
    for a in wanted:
        per.add(a, ia.window_areas(res.window(a)).sum(dim=1).double().cpu() / n**2, per.eo_ratio)
    per.add("full", C.per_image_correct(nets["full"], x, labels))
    awd = nets["awd"]
    for a in opts["alphas"]:
        win = res.window(a)
        per.add(("awd", a), C.per_image_correct(awd, x, labels, windows=win))
        rnd = C.random_windows_like(win, grid, gens["c2"])
        per.add(("random", a), C.per_image_correct(awd, x, labels, windows=rnd))
        cen = C.centred_windows_like(win, grid)
        per.add(("centred", a), C.per_image_correct(awd, x, labels, windows=cen))
    dip = nets["dip"]
    for b in opts["betas"]:
        low = ia.dip_keep(res.order, b)
        per.add(("dip_lowest", b), C.per_image_correct(dip, x, labels, keep=low))
        count, batch = ia.dip_drop_count(b, n), x.shape[0]
        rnd = C.dip_keep_random(n, count, batch, gens["c3"])
        per.add(("dip_random", b), C.per_image_correct(dip, x, labels, keep=rnd))
        high = C.dip_keep_highest(res.order, b)
        per.add(("dip_highest", b), C.per_image_correct(dip, x, labels, keep=high))
    per.n += x.shape[0]


def collect_claims(
    teacher_ckpt: str | Path,
    shards_root: str | Path,
    *,
    alphas: Sequence[float] = (0.025, 0.05, 0.1, 0.2, 0.5),
    betas: Sequence[float] = (0.1, 0.2, 0.3, 0.5),
    locality_alpha: float = 0.1,
    object_threshold: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = False,
    device: str = "auto",
    num_workers: int = 1,
    teacher_sha256: str | None = None,
) -> tuple[PerImage, dict[str, Any]]:
    """One pass over the test split (or its first ``limit`` images, in stream order):
    ``(PerImage, facts)``, facts = what the pass ran on (teacher, view, grid, seconds).
    ``device`` "auto": CUDA when present. ``teacher_sha256``: the teacher file's digest when
    the caller has it (the study), else it is hashed here."""
    start = time.perf_counter()
    ckpt = Path(teacher_ckpt).expanduser()
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    teacher, info = load_teacher(ckpt, device=dev, sha256=teacher_sha256)
    nets, net_hp = _nets(ckpt, dev)
    mean, std = teacher_norm(teacher, info)
    dm = ShardDataModule(
        shards_root, batch_size=batch_size, num_workers=num_workers, img_size=info.img_size,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), hflip=False,
    )  # fmt: skip  # mean 0 / std 1: the 0..1 pixels C1b needs; normalised per batch
    if dm.num_classes != info.num_classes:
        raise ValueError(
            f"teacher {ckpt} has {info.num_classes} classes, shard set {dm.manifest['root']} "
            f"has {dm.num_classes}"
        )
    total = dm.counts["test"] if limit is None else min(int(limit), dm.counts["test"])
    if total < 2:
        raise ValueError(f"the claims need at least 2 test images, got {total} (limit={limit})")
    grid = info.grid
    n = grid[0] * grid[1]
    maxd = math.hypot(grid[0] - 1, grid[1] - 1)
    bins = max(1, math.ceil(maxd / HIST_BIN))
    per = PerImage(grid=grid, edges=np.linspace(0.0, bins * HIST_BIN, bins + 1))
    per.hit_hist, per.random_hist = np.zeros(bins, np.int64), np.zeros(bins, np.int64)
    alphas, betas = [float(a) for a in alphas], [float(b) for b in betas]
    opts = dict(alphas=alphas, betas=betas, locality_alpha=float(locality_alpha),
                object_threshold=float(object_threshold))  # fmt: skip
    gens = {k: _generator(seed, i, dev) for i, k in enumerate(("c1", "c2", "c3"))}
    with torch.inference_mode(), image_progress(disable=not progress) as bar:
        task = bar.add_task("claims", total=total)
        for batch in dm.make_loader("test", rank=0, world_size=1):
            take = min(total - per.n, batch["image"].shape[0])
            x01 = batch["image"][:take].to(dev)
            labels = batch["label"][:take].to(dev)
            _batch(per, nets, teacher, x01, labels, (mean, std), opts, gens)
            bar.advance(task, take)
            if per.n >= total:
                break
    seconds = time.perf_counter() - start
    facts = {
        "teacher": {"path": str(ckpt), "sha256": info.sha256, "model_name": info.model_name,
                    "net": net_hp, "img_size": info.img_size, "patch_size": info.patch_size},
        "shards_root": str(dm.manifest["root"]),
        "source": dm.manifest.get("source"),
        "split": "test",
        "split_images": dm.counts["test"],
        "view": {"img_size": info.img_size, "resize": "shorter side + centre crop",
                 "mean": mean, "std": std},
        "grid": list(grid),
        "N": n,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "measure_seconds": round(seconds, 2),
        "settings": dict(opts, batch_size=int(batch_size), seed=int(seed), limit=limit),
    }  # fmt: skip
    return per.finish(), facts


def measure_claims(
    teacher_ckpt: str | Path,
    shards_root: str | Path,
    *,
    resamples: int = 2000,
    keep_tolerance: float = 0.05,
    **collect_options: Any,
) -> dict[str, Any]:
    """The claims of SPEC 8 measured on ``teacher_ckpt`` (a Lightning checkpoint of our
    modules) over the test split of the shard set ``shards_root`` (prepared or analysed):
    a JSON-serialisable dict (see :func:`claims_table.summarise_claims` for its keys and each
    verdict rule). ``collect_options``: :func:`collect_claims`'s keyword arguments (alphas,
    betas, locality_alpha, object_threshold, batch_size, seed, limit, progress, device,
    num_workers, teacher_sha256). ``resamples``: bootstrap resamples (>= 2000), seeded by
    ``seed``, which also seeds the random controls. ``keep_tolerance``: half-width of the band
    around the paper's 8,866 / 38,416 = 0.2308 for "AWD alpha = 0.1 keeps ~23 % of
    interactions": that row's effect is the mean over images of the AWD(0.1) window-mask
    count / N^2, and its verdict is "supported" when its CI lies strictly inside 0.2308 ±
    tolerance, "contradicted" when it lies entirely outside, "inconclusive" when it straddles
    an edge.
    Images per second counts the whole stage (loading the networks, the pass, the intervals)."""
    start = time.perf_counter()
    per, facts = collect_claims(teacher_ckpt, shards_root, **collect_options)
    seed = facts["settings"]["seed"]
    result = summarise_claims(
        per, facts, resamples=resamples, seed=seed, keep_tolerance=keep_tolerance
    )
    seconds = time.perf_counter() - start
    result["seconds"] = round(seconds, 2)
    result["images_per_second"] = round(per.n / max(seconds, 1e-9), 2)
    return result


def write_claims(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Save ``claims.json`` and the claims figures (``claims_locality.png``,
    ``claims_alpha.png``, ``claims_beta.png``) in ``out_dir``; returns their paths by name
    (``json``, ``locality``, ``alpha``, ``beta``)."""
    import json
    import os

    from winft_lightning import figures as F

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "claims.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    paths = {"json": path}
    hist, curves = result["locality_histogram"], result["curves"]
    c1 = next((r for r in result["claims"] if r["id"] == "C1"), None)
    ref = _band(curves["unrestricted"])
    alpha, beta = curves["alpha"], curves["beta"]
    figs = {
        "locality": F.locality_histogram_figure(
            hist["edges"], hist["hit"], hist["random"], alpha=hist["alpha"],
            grid=tuple(result["grid"]), ratio=c1 and c1["effect"],
            means=c1 and (c1["details"]["mean_hit_distance"], c1["details"]["mean_random_distance"]),
        ),
        "alpha": F.alpha_curves_figure(
            [p["alpha"] for p in alpha], *(_series(alpha, c) for c in ("awd", "random", "centred")),
            unrestricted=ref, eo_ratio=[p["eo_ratio"]["estimate"] for p in alpha],
        ),
        "beta": F.beta_curves_figure(
            [p["beta"] for p in beta], *(_series(beta, c) for c in ("lowest", "random", "highest")),
            unrestricted=ref,
        ),
    }  # fmt: skip
    for name, fig in figs.items():
        paths[name] = F.save(fig, out / f"claims_{name}.png")
    return paths


def _band(ci: dict[str, Any]) -> tuple[float, float, float]:
    return tuple(float("nan") if ci[k] is None else ci[k] for k in ("estimate", "low", "high"))


def _series(points: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, low, high) arrays of one condition over the curve's points."""
    est, low, high = zip(*(_band(p[key]) for p in points), strict=True)
    return np.array(est), np.array(low), np.array(high)
