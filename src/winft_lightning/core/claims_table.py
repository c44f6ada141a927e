"""The claims table of SPEC.md 9 from saved per-image values: for every claim and teacher the
effect, its interval, margin, MDE and verdict (computed by :func:`claims.margin_verdict`, never
by hand), the common verdict over the teachers, and the curves the figures draw.

Input: ``{teacher seed: columns}``, columns as :func:`winft_lightning.stages.claims.collect_claims`
writes them (one ``[n]`` array per value, named by :func:`column`). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from winft_lightning.core import claims as C
from winft_lightning.core import interactions as ia

__all__ = [
    "KEEP_PAPER",
    "MARGINS",
    "ORDERINGS",
    "PAPER",
    "auc",
    "claims_markdown",
    "column",
    "row_specs",
    "summarise_claims",
]

KEEP_PAPER = 8866 / 38416  # Table I: E_O of AWD-ViT-B/16 at alpha 0.1 over ViT-B/16's N^2
PAPER_ALPHA, PAPER_BETA = 0.1, 0.2  # the settings of Tables I / II the headline rows use
# SPEC 9's margins, declared before any run (C1b's is 0.05 N patches)
MARGINS = {"C1": 0.10, "C1b": 0.05, "keep": 0.10, "C2": 0.005, "C3": 0.005}
ORDERINGS = ("variance", "blank", "rollout", "cls", "random")
BASELINE_NAMES = {"variance": "highest-variance", "blank": "blank (lowest pixel std)",
                  "rollout": "attention rollout", "cls": "CLS attention (last block)",
                  "random": "random"}  # fmt: skip

PAPER = {
    "C1": ("Fig. 3(b), Sec. III", "the most interactive regions of the current patch are in "
           "the surrounding area"),
    "C1b": ("Fig. 7, Sec. IV-C", "the responsive field for a patch of the main object usually "
            "tends to be smaller than for a patch of the background"),
    "C2": ("Table I, Sec. IV-A", "U' bounds the interactive region of each patch: the AWD "
           "window keeps the interactions that matter"),
    "C3": ("Table II, Sec. IV-B", "the patches with the lowest column variance of U are "
           "indiscriminative (less is more)"),
    "keep": ("Table I, Sec. IV-A", "at alpha = 10 % we only use nearly 23 % of patch "
             "connections (E_O 8,866 of 38,416)"),
}  # fmt: skip

Columns = Mapping[str, np.ndarray]


def column(*parts: Any) -> str:
    """A per-image value's name, e.g. ``column("correct", "awd", 0.1)`` -> ``"correct:awd:0.1"``."""
    return ":".join(f"{p:g}" if isinstance(p, float) else str(p) for p in parts)


def auc(cols: Columns, ordering: str, direction: str, betas: list[float]) -> np.ndarray:
    """Per image, the mean correctness over the curve beta = 0 (the unrestricted teacher),
    ``betas`` (C3's area under the curve, equal spacing), ``[n]`` float64."""
    points = [
        cols["correct:full"],
        *(cols[column("correct", ordering, direction, b)] for b in betas),
    ]
    return np.mean(np.stack(points).astype(np.float64), axis=0)


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: what it measures, its margin, and its per-image effect (signed so
    that the claim predicts > 0; NaN for an image without one)."""

    id: str
    claim: str
    measure: str
    margin: float
    unit: str  # "pp" (an accuracy difference), "" (an index or fraction), "patches"
    headline: bool
    effect: Callable[[Columns], np.ndarray]


def _diff(a: str, b: str) -> Callable[[Columns], np.ndarray]:
    return lambda cols: cols[a].astype(np.float64) - cols[b].astype(np.float64)


def _closest(values: list[float], target: float) -> float:
    return min(values, key=lambda v: (abs(v - target), v))


def row_specs(settings: Mapping[str, Any], n_patches: int) -> list[RowSpec]:
    """Every row of SPEC 9's table for a pass run with ``settings``, in the table's order."""
    la, alphas, betas = settings["locality_alpha"], settings["alphas"], settings["betas"]
    keep_alphas = settings["keep_alphas"]
    a_head, b_head = _closest(alphas, PAPER_ALPHA), _closest(betas, PAPER_BETA)
    span = f"beta = 0, {betas[0]:g} .. {betas[-1]:g}"
    rows = [
        RowSpec("C1", "C1", f"locality index of U' at alpha={la:g}: sum_p (r_p - d_p) / "
                "sum_p (r_p - n_p); 0 = chance, 1 = the nearest patches", MARGINS["C1"], "",
                True, lambda c: c["locality"].astype(np.float64)),
        RowSpec("C1b", "C1b", f"object-minus-background mean field size (alpha={la:g}, beta=0) under "
                "a random U' with the same hits per row, minus the same gap under U (paired)",
                MARGINS["C1b"] * n_patches, "patches", True, _diff("gap_null", "gap")),
    ]  # fmt: skip
    for a in keep_alphas:
        rows.append(RowSpec(
            f"keep/alpha={a:g}", "keep", f"1 - kept(U) / kept(random U') at alpha={a:g} "
            "(kept: window-mask count / N^2)", MARGINS["keep"], "", a == PAPER_ALPHA,
            lambda c, a=a: 1.0 - c[column("kept", a)] / c[column("kept_null", a)],
        ))  # fmt: skip
    for a in alphas:
        for control in ("random", "centred"):
            rows.append(RowSpec(
                f"C2/{control}/alpha={a:g}", "C2", f"top-1 under AWD(alpha={a:g}) windows minus "
                f"under {control} windows of the same w x h containing p", MARGINS["C2"], "pp",
                a == a_head, _diff(column("correct", "awd", a), column("correct", control, a)),
            ))  # fmt: skip
    for base in ORDERINGS:
        other = "highest" if base == "variance" else "lowest"
        rows.append(RowSpec(
            f"C3/{base}", "C3", f"area under top-1 vs beta ({span}), dropping the lowest "
            f"U-variance patches first, minus dropping the {BASELINE_NAMES[base]} "
            f"{'patches first' if base == 'variance' else 'ordering lowest first'}",
            MARGINS["C3"], "pp", True,
            lambda c, base=base, other=other: auc(c, "variance", "lowest", betas)
            - auc(c, base, other, betas),
        ))  # fmt: skip
    for base in ORDERINGS[1:]:
        rows.append(RowSpec(
            f"C3/{base}/highest-first", "C3", f"area under top-1 vs beta ({span}), dropping "
            f"the {BASELINE_NAMES[base]} ordering highest first, minus dropping the highest "
            "U-variance patches first", MARGINS["C3"], "pp", False,
            lambda c, base=base: auc(c, base, "highest", betas)
            - auc(c, "variance", "highest", betas),
        ))  # fmt: skip
    for b in betas:
        rows.append(RowSpec(
            f"C3/free/beta={b:g}", "C3", f"top-1 with the {ia.dip_drop_count(b, n_patches)} "
            f"lowest-variance patches dropped (beta={b:g}) minus the unrestricted teacher",
            MARGINS["C3"], "pp", b == b_head,
            _diff(column("correct", "variance", "lowest", b), "correct:full"),
        ))  # fmt: skip
    return rows


def attention_profile(records: Mapping[int, Columns], n_patches: int) -> dict[str, Any] | None:
    """Per teacher, the mean attention distance of each block and head (mean over images) and
    the mean distance of U's hits; None when the pass did not keep them."""
    out = {}
    for seed_k, cols in records.items():
        names = sorted((tuple(int(v) for v in k.split(":")[1:]), k) for k in cols
                       if k.startswith("attn_distance:"))  # fmt: skip
        if not names:
            return None
        blocks = 1 + max(b for (b, _), _ in names)
        heads = 1 + max(h for (_, h), _ in names)
        grid = [[float(cols[column("attn_distance", b, h)].mean()) for h in range(heads)]
                for b in range(blocks)]  # fmt: skip
        hits = cols["hit_distance"]
        out[str(seed_k)] = {"blocks": grid, "hits": float(np.nanmean(hits))}
    return out


def _interval(values: np.ndarray, resamples: int, seed: int) -> C.Interval | None:
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return None
    return C.paired_bootstrap_ci(finite, resamples=resamples, seed=seed)


def _teacher_cell(ci: C.Interval | None, margin: float, skipped: int) -> dict[str, Any]:
    if ci is None:
        return {"effect": None, "low": None, "high": None, "n": 0, "mde": None,
                "verdict": C.INCONCLUSIVE, "skipped": skipped}  # fmt: skip
    return {"effect": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n, "mde": C.mde(ci),
            "verdict": C.margin_verdict(ci, margin), "skipped": skipped}  # fmt: skip


def _curves(records: Mapping[int, Columns], settings, resamples, seed) -> dict[str, Any]:
    """Per teacher: accuracy per ordering and direction over beta (0 first), and the paired
    differences the figures draw (C2 per alpha and control; DIP minus each baseline per beta,
    lowest first) with their intervals."""
    betas, alphas = settings["betas"], settings["alphas"]
    out: dict[str, Any] = {"betas": [0.0, *betas], "alphas": alphas, "teachers": {}}
    for seed_k, cols in records.items():
        full = float(cols["correct:full"].mean())
        acc = {f"{o}:{d}": [full, *(float(cols[column("correct", o, d, b)].mean()) for b in betas)]
               for o in ORDERINGS for d in ("lowest", "highest")}  # fmt: skip

        def ci(values, seed_=seed):
            i = _interval(values, resamples, seed_)
            return [i.estimate, i.low, i.high]

        c3 = {base: [ci(_diff(column("correct", "variance", "lowest", b),
                              column("correct", base, "highest" if base == "variance" else "lowest", b))(cols))
                     for b in betas] for base in ORDERINGS}  # fmt: skip
        c2 = {control: [ci(_diff(column("correct", "awd", a), column("correct", control, a))(cols))
                        for a in alphas] for control in ("random", "centred")}  # fmt: skip
        out["teachers"][str(seed_k)] = {"top1": full, "accuracy": acc, "c3_difference": c3,
                                        "c2_difference": c2}  # fmt: skip
    return out


def summarise_claims(
    records: Mapping[int, Columns],
    settings: Mapping[str, Any],
    n_patches: int,
    *,
    resamples: int = C.MIN_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """SPEC 9's table over the teachers in ``records`` (``{seed: columns}``, each teacher's own
    pass with ``settings``). Per row: ``teachers`` (per seed: effect, low, high, n, mde,
    verdict, skipped images), ``pooled`` (the mean of the teachers' effects, for reading only),
    ``verdict`` (the common one, or "mixed (...)"), ``margin`` and the row's text. Intervals:
    percentile bootstrap over images, ``resamples``, ``seed``; verdicts by
    :func:`claims.margin_verdict`; also each teacher's ``curves``."""
    if not records:
        raise ValueError("no teacher's values to summarise")
    rows = []
    for spec in row_specs(settings, n_patches):
        cells = {}
        for seed_k, cols in records.items():
            values = spec.effect(cols)
            skipped = int((~np.isfinite(values)).sum())
            cells[str(seed_k)] = _teacher_cell(_interval(values, resamples, seed), spec.margin,
                                               skipped)  # fmt: skip
        effects = [c["effect"] for c in cells.values() if c["effect"] is not None]
        place, statement = PAPER[spec.claim]
        rows.append({
            "id": spec.id, "claim": spec.claim, "statement": statement, "paper": place,
            "measure": spec.measure, "margin": spec.margin, "unit": spec.unit,
            "headline": spec.headline, "teachers": cells,
            "pooled": float(np.mean(effects)) if effects else None,
            "verdict": C.common_verdict([c["verdict"] for c in cells.values()]),
        })  # fmt: skip
    keep = {str(k): {f"{a:g}": [float(cols[column("kept", a)].mean()),
                                float(cols[column("kept_null", a)].mean())]
                         for a in settings["keep_alphas"]} for k, cols in records.items()}  # fmt: skip
    return {
        "claims": rows,
        "attention_profile": attention_profile(records, n_patches),
        "keep_levels": keep,  # per teacher and alpha: mean kept(U), mean kept(random U')
        "curves": _curves(records, settings, resamples, seed),
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": 0.95},
        "rule": "SPEC 9: negligible if -m < low and high < m; contradicted if high < 0; "
        "supported if low > m; else inconclusive. MDE = 2.8 x the CI's standard error.",
    }


def _fmt(v: float | None, unit: str) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v * 100:+.2f}" if unit == "pp" else f"{v:+.3f}"


def claims_markdown(result: Mapping[str, Any], headline_only: bool = True) -> str:
    """The table: claim, the paper's place, our measure, margin, per teacher the effect
    [95 % CI], MDE and verdict, the pooled effect, and the verdict. Accuracy rows are in
    percentage points, C1 and keep as plain numbers, C1b in patches."""
    rows = [r for r in result["claims"] if r["headline"] or not headline_only]
    seeds = list(rows[0]["teachers"]) if rows else []
    head = "| claim | paper | our measure | margin | " + " | ".join(
        f"teacher {s}: effect [95 % CI], MDE, verdict" for s in seeds
    )
    lines = [head + " | pooled | verdict |", "|" + "---|" * (len(seeds) + 6)]
    for r in rows:
        unit = r["unit"]
        suffix = " pp" if unit == "pp" else (" patches" if unit == "patches" else "")
        cells = []
        for c in r["teachers"].values():
            cells.append(f"{_fmt(c['effect'], unit)} [{_fmt(c['low'], unit)}, "
                         f"{_fmt(c['high'], unit)}], MDE {_fmt(c['mde'], unit).lstrip('+')}, "
                         f"**{c['verdict']}**")  # fmt: skip
        margin = _fmt(r["margin"], unit).lstrip("+")
        lines.append(f"| {r['id']} | {r['paper']} | {r['measure']} | {margin}{suffix} | "
                     + " | ".join(cells) + f" | {_fmt(r['pooled'], unit)}{suffix} | "
                     f"**{r['verdict']}** |")  # fmt: skip
    return "\n".join(lines) + "\n"
