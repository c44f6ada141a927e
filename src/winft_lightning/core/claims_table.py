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
from winft_lightning.core.claims_pooled import NO_HEADLINE, pool_rows

__all__ = [
    "BASELINES",
    "HEADLINE_BASELINES",
    "KEEP_PAPER",
    "MARGINS",
    "ORDERINGS",
    "PAPER",
    "STEP_BETAS",
    "auc",
    "baselines_markdown",
    "claims_markdown",
    "column",
    "informative",
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
# SPEC 10: every baseline ordering against random first (the highest-variance one is DIP's
# order reversed); the headline C3 rows are DIP against these two; verdicts per beta at these
BASELINES = ("blank", "rollout", "cls", "variance")
HEADLINE_BASELINES = ("random", "rollout")
STEP_BETAS = (0.1, 0.2, 0.3)

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
    effect: Callable[[Columns], np.ndarray]  # raises KeyError for a column the pass lacks
    rule: str = "margin"  # "margin" (SPEC 9) or "non-inferiority" (SPEC 10: "free")
    baseline: str | None = None  # C3 rows: the ordering the row is about (see informative)


def _diff(a: str, b: str) -> Callable[[Columns], np.ndarray]:
    return lambda cols: cols[a].astype(np.float64) - cols[b].astype(np.float64)


def _closest(values: list[float], target: float) -> float:
    return min(values, key=lambda v: (abs(v - target), v))


def _drop(base: str) -> str:
    """The direction a baseline drops its least relevant patches first: the highest-variance
    baseline drops the highest U-variance patches, every other its lowest scores."""
    return "highest" if base == "variance" else "lowest"


def _c3_rows(betas: list[float], n_patches: int) -> list[RowSpec]:
    """C3's rows (SPEC 10): each baseline against random, DIP against each baseline (area;
    headline against random and rollout, and those two per beta of STEP_BETAS), each baseline
    highest-first, and "dropping is free" per beta as non-inferiority."""
    span, m = f"beta = 0, {betas[0]:g} .. {betas[-1]:g}", MARGINS["C3"]
    area = f"area under top-1 vs beta ({span})"
    dip = "dropping the lowest U-variance patches first"
    rows = [RowSpec(
        f"C3/baseline/{base}", "C3", f"{area}, dropping the {BASELINE_NAMES[base]} "
        f"{'patches first' if base == 'variance' else 'ordering lowest first'}, minus dropping "
        "a random order's first: the baseline is informative only where this is supported",
        m, "pp", False, lambda c, base=base: auc(c, base, _drop(base), betas)
        - auc(c, "random", "lowest", betas), baseline=base,
    ) for base in BASELINES]  # fmt: skip
    rows += [RowSpec(
        f"C3/{base}", "C3", f"{area}, {dip}, minus dropping the {BASELINE_NAMES[base]} "
        f"{'patches first' if base == 'variance' else 'ordering lowest first'}", m, "pp",
        base in HEADLINE_BASELINES, lambda c, base=base: auc(c, "variance", "lowest", betas)
        - auc(c, base, _drop(base), betas), baseline=base,
    ) for base in ORDERINGS]  # fmt: skip
    rows += [RowSpec(
        f"C3/{base}/beta={b:g}", "C3", f"top-1 at beta={b:g} ({ia.dip_drop_count(b, n_patches)} "
        f"patches dropped), {dip}, minus dropping the {BASELINE_NAMES[base]} ordering lowest "
        "first", m, "pp", b == PAPER_BETA,
        _diff(column("correct", "variance", "lowest", b), column("correct", base, "lowest", b)),
        baseline=base,
    ) for base in HEADLINE_BASELINES for b in STEP_BETAS]  # fmt: skip
    rows += [RowSpec(
        f"C3/{base}/highest-first", "C3", f"{area}, dropping the {BASELINE_NAMES[base]} "
        "ordering highest first, minus dropping the highest U-variance patches first", m, "pp",
        False, lambda c, base=base: auc(c, base, "highest", betas)
        - auc(c, "variance", "highest", betas), baseline=base,
    ) for base in ORDERINGS[1:]]  # fmt: skip
    rows += [RowSpec(
        f"C3/free/beta={b:g}", "C3", f"top-1 with the {ia.dip_drop_count(b, n_patches)} lowest-"
        f"variance patches dropped (beta={b:g}) minus the unrestricted teacher; non-inferiority: "
        "non-inferior if low > -m, inferior if high < -m", m, "pp", b == PAPER_BETA,
        _diff(column("correct", "variance", "lowest", b), "correct:full"),
        rule="non-inferiority",
    ) for b in sorted({*betas, *STEP_BETAS})]  # fmt: skip
    return rows


def row_specs(settings: Mapping[str, Any], n_patches: int) -> list[RowSpec]:
    """Every row of SPEC 9's table, with SPEC 10's C3 rows, for a pass run with ``settings``,
    in the table's order. A row whose columns the pass did not measure (a beta it did not run,
    a record older than the row) raises KeyError from its ``effect``: "not run"."""
    la, alphas, betas = settings["locality_alpha"], settings["alphas"], settings["betas"]
    keep_alphas = settings["keep_alphas"]
    a_head = _closest(alphas, PAPER_ALPHA)
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
    return rows + _c3_rows(betas, n_patches)


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


RULES = C.VERDICT_RULES
NOT_RUN_CELL = {"effect": None, "low": None, "high": None, "n": 0, "mde": None, "se": None,
                "verdict": C.NOT_RUN, "skipped": 0}  # fmt: skip


def _teacher_cell(ci: C.Interval | None, margin: float, skipped: int, rule: str) -> dict[str, Any]:
    if ci is None:
        return {"effect": None, "low": None, "high": None, "n": 0, "mde": None, "se": None,
                "verdict": C.INCONCLUSIVE, "skipped": skipped}  # fmt: skip
    return {"effect": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n, "mde": C.mde(ci),
            "se": ci.se, "verdict": RULES[rule](ci, margin), "skipped": skipped}  # fmt: skip


def _cells(spec: RowSpec, records: Mapping[int, Columns], resamples: int, seed: int) -> dict:
    """Per teacher the row's cell; "not run" where the pass lacks the row's columns."""
    cells = {}
    for seed_k, cols in records.items():
        try:
            values = spec.effect(cols)
        except KeyError:  # a beta or condition this pass did not measure
            cells[str(seed_k)] = dict(NOT_RUN_CELL)
            continue
        skipped = int((~np.isfinite(values)).sum())
        ci = _interval(values, resamples, seed)
        cells[str(seed_k)] = _teacher_cell(ci, spec.margin, skipped, spec.rule)
    return cells


def informative(verdict: str) -> bool | None:
    """Whether a C3 baseline is evidence (SPEC 10), from its row against random: only a
    "supported" one beats random by the margin; None when that row was not run."""
    if verdict == C.NOT_RUN:
        return None
    return verdict == C.SUPPORTED


def _baselines(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per C3 baseline its verdict against random and whether it is informative (random, the
    reference, is informative by definition); marks each DIP-vs-baseline row with it."""
    out = {"random": {"verdict": None, "informative": True}}
    for r in rows:
        if r["id"].startswith("C3/baseline/"):
            # the pooled verdict; below K = 3 (none given) every teacher's own must agree
            v = r["teacher_verdicts"] if r["verdict"].startswith(NO_HEADLINE) else r["verdict"]
            out[r["baseline"]] = {"verdict": v, "informative": informative(v)}
    for r in rows:
        if r["baseline"] in out and not r["id"].startswith(("C3/baseline/", "C3/free/")):
            r["baseline_informative"] = out[r["baseline"]]["informative"]
    return out


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
    se, verdict, skipped images), ``pooled`` (SPEC 10: the random-effects meta-analysis over the
    teachers, :func:`claims_pooled.pool_row`; headline rows Bonferroni-simultaneous),
    ``verdict`` (the pooled one; "no headline verdict" below K = 3), ``teacher_verdicts`` (the
    common per-teacher verdict, or "mixed (...)"), ``margin``, ``rule`` and the row's text;
    C3 rows name their ``baseline`` and whether it is informative (``c3_baselines``: each
    baseline's verdict against random). Intervals: percentile bootstrap over images,
    ``resamples``, ``seed``; verdicts by :func:`claims.margin_verdict` (the "free" rows:
    :func:`claims.noninferiority_verdict`), "not run" where a pass lacks a row's columns;
    also each teacher's ``curves``."""
    if not records:
        raise ValueError("no teacher's values to summarise")
    rows = []
    for spec in row_specs(settings, n_patches):
        cells = _cells(spec, records, resamples, seed)
        place, statement = PAPER[spec.claim]
        rows.append({
            "id": spec.id, "claim": spec.claim, "statement": statement, "paper": place,
            "measure": spec.measure, "margin": spec.margin, "unit": spec.unit,
            "headline": spec.headline, "rule": spec.rule, "baseline": spec.baseline,
            "teachers": cells, "verdict": C.common_verdict([c["verdict"] for c in cells.values()]),
        })  # fmt: skip
    family = pool_rows(rows)  # SPEC 10: the teacher is the unit; verdict = the pooled one
    baselines = _baselines(rows)
    keep = {str(k): {f"{a:g}": [float(cols[column("kept", a)].mean()),
                                float(cols[column("kept_null", a)].mean())]
                         for a in settings["keep_alphas"]} for k, cols in records.items()}  # fmt: skip
    return {
        "claims": rows,
        "c3_baselines": baselines,  # SPEC 10: which C3 baselines beat random (informative)
        "attention_profile": attention_profile(records, n_patches),
        "keep_levels": keep,  # per teacher and alpha: mean kept(U), mean kept(random U')
        "curves": _curves(records, settings, resamples, seed),
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": 0.95},
        "family": family,
        "rule": "SPEC 9: negligible if -m < low and high < m; contradicted if high < 0; "
        'supported if low > m; else inconclusive. "Dropping is free" (C3/free) is '
        "non-inferiority (SPEC 10): non-inferior if low > -m, inferior if high < -m, else "
        'inconclusive. A row whose conditions the pass did not measure says "not run". '
        "MDE = 2.8 x the CI's standard error.",
    }


def _fmt(v: float | None, unit: str) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v * 100:+.2f}" if unit == "pp" else f"{v:+.3f}"


def _teacher_markdown(c: Mapping[str, Any], unit: str) -> str:
    if c["verdict"] == C.NOT_RUN:
        return f"**{C.NOT_RUN}**"
    return (f"{_fmt(c['effect'], unit)} [{_fmt(c['low'], unit)}, {_fmt(c['high'], unit)}], "
            f"MDE {_fmt(c['mde'], unit).lstrip('+')}, **{c['verdict']}**")  # fmt: skip


def baselines_markdown(baselines: Mapping[str, Mapping[str, Any]]) -> str:
    """SPEC 10's sentence on which C3 baselines are informative (beat random by the margin)."""
    named = {("highest-variance" if k == "variance" else k): v for k, v in baselines.items()
             if k != "random"}  # fmt: skip
    groups = {"informative": [k for k, v in named.items() if v["informative"]],
              "uninformative": [f"{k} ({v['verdict']})" for k, v in named.items()
                                if v["informative"] is False],
              "not run": [k for k, v in named.items() if v["informative"] is None]}  # fmt: skip
    said = "; ".join(f"{g}: {', '.join(ks)}" for g, ks in groups.items() if ks)
    return (
        f"C3 baselines against random (rows C3/baseline/*, SPEC 10): {said}. A baseline is "
        "informative only where its area beats a random order's by the margin "
        '("supported"); DIP beating an uninformative baseline adds nothing.'
    )


def _pooled_markdown(r: Mapping[str, Any], suffix: str) -> tuple[str, str]:
    """The pooled cell ("effect [low, high] (K, tau^2)") and the power cell of one row."""
    p, unit = r["pooled"], r["unit"]
    if p["effect"] is None:
        return "n/a", "n/a"
    cell = (f"{_fmt(p['effect'], unit)} [{_fmt(p['low'], unit)}, {_fmt(p['high'], unit)}]"
            f"{suffix} (K = {p['k']}, tau² = {p['tau2']:.3g})")  # fmt: skip
    reach = "reachable" if p["negligible_reachable"] else "out of reach"
    return cell, f"{_fmt(p['supported_needs'], unit)}{suffix}; negligible {reach}"


def claims_markdown(result: Mapping[str, Any], headline_only: bool = True) -> str:
    """The table: claim, the paper's place, our measure, margin, per teacher the effect
    [95 % CI], MDE and verdict ("not run" where the pass did not measure it), the pooled
    effect and interval over the teachers (SPEC 10; simultaneous over the headline rows),
    the power both ways, the verdict (the pooled one) and the per-teacher verdicts. Accuracy
    rows are in percentage points, C1 and keep as plain numbers, C1b in patches. A
    DIP-vs-baseline row whose baseline does not beat random says so; the headline table ends
    with which C3 baselines are informative."""
    rows = [r for r in result["claims"] if r["headline"] or not headline_only]
    seeds = list(rows[0]["teachers"]) if rows else []
    head = "| claim | paper | our measure | margin | " + " | ".join(
        f"teacher {s}: effect [95 % CI], MDE, verdict" for s in seeds
    )
    lines = [head + " | pooled over teachers [CI] | supported needs (80 % power); negligible "
             "| verdict | per-teacher verdicts |", "|" + "---|" * (len(seeds) + 8)]  # fmt: skip
    for r in rows:
        unit = r["unit"]
        suffix = " pp" if unit == "pp" else (" patches" if unit == "patches" else "")
        cells = [_teacher_markdown(c, unit) for c in r["teachers"].values()]
        margin = _fmt(r["margin"], unit).lstrip("+")
        measure = r["measure"]
        if r.get("baseline_informative") is False:
            measure += " (this baseline does not beat random: uninformative)"
        pooled, power = _pooled_markdown(r, suffix)
        lines.append(f"| {r['id']} | {r['paper']} | {measure} | {margin}{suffix} | "
                     + " | ".join(cells) + f" | {pooled} | {power} | **{r['verdict']}** | "
                     f"{r['teacher_verdicts']} |")  # fmt: skip
    family = result.get("family")
    if headline_only and family:
        lines += ["", f"Pooled: {family['method']}; the {family['rows']} headline rows' "
                  f"intervals are simultaneous at {family['confidence']:.0%} (each at "
                  f"{family['per_row_confidence']:.4f}). With K < 3 teachers no headline "
                  "verdict is given (SPEC 10)."]  # fmt: skip
    if headline_only and result.get("c3_baselines"):
        lines += ["", baselines_markdown(result["c3_baselines"])]
    return "\n".join(lines) + "\n"
