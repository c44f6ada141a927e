"""The randomisation null of SPEC.md 10 (Adebayo et al. 2018) for the claims about U itself: C1
(locality index of U'), C1b (the object / background field-size gap against a random U'), the
keep fraction against a random U', and how DIP's order agrees with the blank order (Spearman's
rho per image), measured on a teacher and on the same teacher re-initialised
(:func:`winft_lightning.models.randomise.randomised`: all at once, and cascading from the last
block down). The accuracy rows (C2, C3) are not: a random teacher is at chance.

The per-image columns are named and computed as :func:`winft_lightning.stages.claims
.collect_claims` computes them (its ``_batch``; a test holds the two equal): U and the DIP order
from :func:`analysis.analyze`, the random U' drawn from the same seeded stream (stream 0 of
``seed``, consumed in batch order, then alpha order over the same alphas), C1b's and the keep
fraction's columns by its :func:`~winft_lightning.stages.claims.field_columns`. Their effects are :func:`claims_table.row_specs`' own rows (C1, C1b, keep/*),
with its margins; the agreement is :func:`core.agreement.spearman_orders` of DIP's order and
``baselines.ascending_order(blank_scores)``, the blank order C3 drops from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from winft_lightning.core import baselines as B
from winft_lightning.core import claims as C
from winft_lightning.core import interactions as ia
from winft_lightning.core.agreement import spearman_orders
from winft_lightning.core.analysis import analyze
from winft_lightning.core.claims_table import row_specs
from winft_lightning.core.interactions import Grid
from winft_lightning.models.randomise import randomised
from winft_lightning.stages.claims import _generator, field_columns

__all__ = [
    "AGREEMENT",
    "DEFAULTS",
    "U_CLAIMS",
    "null_columns",
    "null_summary",
    "randomisation_null",
    "u_effects",
]

U_CLAIMS = ("C1", "C1b", "keep")  # claims_table's claims about U itself
AGREEMENT = "rho:variance:blank"  # the column (and effect) of DIP's rank agreement with blank
# collect_claims' defaults (alphas / betas only name row_specs' other rows and the null stream)
DEFAULTS = dict(alphas=[0.05, 0.1, 0.2], betas=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                keep_alphas=[0.05, 0.1, 0.2], locality_alpha=0.1, object_threshold=0.1)  # fmt: skip


def _opts(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    s = {**DEFAULTS, **(settings or {})}
    return {k: [float(a) for a in s[k]] if isinstance(DEFAULTS[k], list) else float(s[k])
            for k in DEFAULTS}  # fmt: skip


def _u_batch(cols, model, x01, norm, opts, gen, grid, ties=None) -> None:
    """The per-image values about U of one batch (``x01`` the analyzed view in 0..1) into
    ``cols``, as collect_claims' ``_batch`` computes them (``ties``: the blank order's
    tie-breaking permutations, as there; None: by index)."""

    def add(name: str, value: Tensor) -> None:
        cols.setdefault(name, []).append(value.detach().cpu().numpy())

    x = TF.normalize(x01, *norm)
    wanted = sorted({*opts["alphas"], opts["locality_alpha"], *opts["keep_alphas"]})
    res = analyze(model, x, wanted, grid)
    hits = {a: ia.top_interactions(res.u, a) for a in wanted}
    null = {a: B.random_u_hits(hits[a], gen) for a in wanted}  # collect_claims' draw order
    la = opts["locality_alpha"]
    add("locality", B.locality_index(hits[la], grid))
    add("locality_null", B.locality_index(null[la], grid))
    field_columns(add, res.order, hits, null, x01, grid, opts)
    blank = B.ascending_order(B.blank_scores(x01, grid), ties)
    add(AGREEMENT, spearman_orders(res.order, blank))


def null_columns(
    model: nn.Module, images01: Tensor, norm: tuple[Sequence[float], Sequence[float]],
    grid: Grid | None = None, settings: Mapping[str, Any] | None = None, *, seed: int = 0,
    batch_size: int = 250, keys: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The per-image values about U of ``images01`` (``[B, 3, H, W]`` in 0..1, the analyzed
    view; normalised by ``norm = (mean, std)`` for the model) under the timm ViT ``model``:
    ``{name: [B] array}`` (locality, locality_null, gap, gap_null, kept:a, kept_null:a,
    object_fraction, :data:`AGREEMENT`). ``settings``: collect_claims' (``alphas``,
    ``keep_alphas``, ``locality_alpha``, ``object_threshold``; :data:`DEFAULTS` else);
    ``batch_size`` and ``seed`` as there give the same random U'. ``keys``: the images' keys,
    whose seeded permutations break the blank order's ties as the claims pass does (SPEC 10);
    None: ties by patch index."""
    if grid is None:
        grid = tuple(int(g) for g in model.patch_embed.grid_size)
    opts = _opts(settings)
    dev = images01.device
    gen = _generator(seed, 0, dev)  # collect_claims' "null" stream
    cols: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for start in range(0, images01.shape[0], int(batch_size)):
            x01 = images01[start : start + int(batch_size)]
            ties = None
            if keys is not None:
                chunk = keys[start : start + int(batch_size)]
                ties = B.tie_permutations(
                    [B.key_seed(k, seed) for k in chunk], grid[0] * grid[1], dev
                )
            _u_batch(cols, model, x01, norm, opts, gen, grid, ties)
    return {k: np.concatenate(v) for k, v in cols.items()}


def variant_names(model: nn.Module, modes: Sequence[str], depths: Sequence[int] | None) -> list:
    """``[(name, mode, depth)]`` of the randomised variants: ``("all", "all", None)`` and
    ``("cascade:k", "cascade", k)`` for each depth (default 1 .. the block count)."""
    depths = list(range(1, len(model.blocks) + 1)) if depths is None else [int(d) for d in depths]
    out = []
    for mode in modes:
        if mode == "all":
            out.append(("all", "all", None))
        elif mode == "cascade":
            out += [(f"cascade:{d}", "cascade", d) for d in depths]
        else:
            raise ValueError(f'modes are "all" and "cascade", got {mode!r}')
    return out


def randomisation_null(
    teacher: nn.Module, images01: Tensor, norm: tuple[Sequence[float], Sequence[float]],
    grid: Grid | None = None, settings: Mapping[str, Any] | None = None, *, seed: int = 0,
    modes: Sequence[str] = ("all", "cascade"), depths: Sequence[int] | None = None,
    limit: int | None = 500, batch_size: int = 250, init_seed: int | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """:func:`null_columns` of the first ``limit`` images (None: all) under the ``teacher``
    (``"trained"``) and each re-initialised variant (``"all"``; ``"cascade:k"`` the top and
    the last k blocks, for each of ``depths``, default 1 .. the block count). One init seed
    (``init_seed``, default ``seed``) for every variant, so the cascade is nested; every
    variant draws its random U' from the same stream (``seed``), so the variants are paired
    image by image."""
    x = images01 if limit is None else images01[: int(limit)]
    keys = None if keys is None or limit is None else list(keys)[: int(limit)]
    init = seed if init_seed is None else init_seed

    def cols(model: nn.Module) -> dict[str, np.ndarray]:
        return null_columns(model, x, norm, grid, settings, seed=seed, batch_size=batch_size,
                            keys=keys)  # fmt: skip

    out = {"trained": cols(teacher)}
    for name, mode, depth in variant_names(teacher, modes, depths):
        out[name] = cols(randomised(teacher, mode, depth, seed=init).eval())
    return out


def u_effects(
    cols: Mapping[str, np.ndarray], settings: Mapping[str, Any] | None, n_patches: int
) -> dict[str, tuple[np.ndarray, float | None]]:
    """Each U claim's per-image effect (claims_table's rows C1, C1b, keep/alpha=..., signed so
    the claim predicts > 0, NaN where an image has none) and its margin, and the agreement
    (rho, no margin): ``{row id: (effect [n] float64, margin)}``."""
    specs = [r for r in row_specs(_opts(settings), n_patches) if r.claim in U_CLAIMS]
    out = {r.id: (np.asarray(r.effect(cols), dtype=np.float64), r.margin) for r in specs}
    out[AGREEMENT] = (np.asarray(cols[AGREEMENT], dtype=np.float64), None)
    return out


def null_summary(
    records: Mapping[str, Mapping[str, np.ndarray]], settings: Mapping[str, Any] | None,
    n_patches: int, *, resamples: int = C.MIN_RESAMPLES, seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:  # fmt: skip
    """Per variant (``records`` as :func:`randomisation_null` returns them) and U row: the
    effect, its paired-bootstrap interval over the images and standard error (``se``: what
    pooling over teachers weighs it by), the margin and SPEC 9's verdict (None for the
    agreement, which has no margin)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, cols in records.items():
        out[name] = {}
        for row, (effect, margin) in u_effects(cols, settings, n_patches).items():
            finite = effect[np.isfinite(effect)]
            cell: dict[str, Any] = {"margin": margin, "n": int(finite.size), "effect": None,
                                    "low": None, "high": None, "se": None,
                                    "verdict": C.INCONCLUSIVE}  # fmt: skip
            if finite.size >= 2:
                ci = C.paired_bootstrap_ci(finite, resamples=resamples, seed=seed)
                verdict = None if margin is None else C.margin_verdict(ci, margin)
                cell |= {"effect": ci.estimate, "low": ci.low, "high": ci.high, "se": ci.se,
                         "verdict": verdict}  # fmt: skip
            out[name][row] = cell
    return out
