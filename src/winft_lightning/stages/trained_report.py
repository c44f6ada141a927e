"""The trained part of the study: the paper's three comparisons (Tables I-III), WinfT on the
paper's responsive field, and the retrained controls (SPEC 9's random ones, SPEC 10's centred
windows and blankest drops), paired by seed, each with a t interval and the exact sign-flip p,
rebuilt from the students' records alone.

Layout of a trained dir::

    records/runs.csv     one row per student run (family, alpha, beta, seed, top-1, E_O, ...)
    facts.json           the part's settings (students, seeds, teacher), machine, command, wall
    comparisons.json, report.md, trained_deltas.png   rebuilt by :func:`rebuild`

``python -m winft_lightning.study recompute=<dir>`` calls :func:`rebuild`: the same bytes.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from winft_lightning.core import claims as C
from winft_lightning.core.families import BY_NAME
from winft_lightning.core.pooling import sign_flip_p
from winft_lightning.runtime.files import write_json_atomic

__all__ = [
    "CONTROL_LABELS",
    "OPTIONAL_CLAIMS",
    "TRAINED_CLAIMS",
    "TRAINED_MARGIN",
    "not_run_note",
    "read_runs",
    "rebuild",
    "trained_comparisons",
    "trained_markdown",
    "write_part",
]

LABELS = {f.name: f.label for f in BY_NAME.values()}
CONTROL_LABELS = {"awd_vit:random": "AWD-ViT, random windows",
                  # SPEC 9's random control replaces both members: windows and drops
                  "awd_dip_vit:random": "AWD+DIP ViT, random windows and drop",
                  "awd_vit:centred": "AWD-ViT, centred windows",
                  "awd_dip_vit:blank": "AWD+DIP ViT, blankest drop"}  # fmt: skip

# (id, claim, the paper's figure, treated (family, alpha, beta), control): Tables I-III's rows,
# SPEC 9's retrained controls (T1', T2': the same arm against random windows / drops), SPEC
# 10's controls without a teacher at the same cost (T1'': windows of AWD's sizes centred on
# each patch; T2'': DIP's count of the blankest patches dropped, AWD's windows kept) and WinfT
# on the paper's responsive field (T3b: the AWD window less the DIP set, beta = 0.2)
TRAINED_CLAIMS = (
    ("T1", "AWD (alpha = 0.1) beats ViT", "Table I", "81.90 vs 81.20 % (+0.70)",
     ("awd_vit", 0.1, 0.0), ("vit", 1.0, 0.0)),
    ("T1'", "AWD (alpha = 0.1) windows beat random windows of their size", "SPEC 9",
     "no paper figure (Table I's +0.70 is against ViT)",
     ("awd_vit", 0.1, 0.0), ("awd_vit:random", 0.1, 0.0)),
    ("T1''", "AWD (alpha = 0.1) windows beat windows of their size centred on each patch",
     "SPEC 10", "no paper figure (Table I's +0.70 is against ViT)",
     ("awd_vit", 0.1, 0.0), ("awd_vit:centred", 0.1, 0.0)),
    ("T2", "DIP (beta = 0.2) improves AWD (alpha = 0.1)", "Table II", "82.40 vs 81.90 % (+0.50)",
     ("awd_dip_vit", 0.1, 0.2), ("awd_vit", 0.1, 0.0)),
    ("T2'", "AWD+DIP (beta = 0.2) beats random windows of AWD's sizes with as many random drops",
     "SPEC 9",
     "no paper figure (Table II's +0.50 is against AWD)",
     ("awd_dip_vit", 0.1, 0.2), ("awd_dip_vit:random", 0.1, 0.2)),
    ("T2''", "DIP (beta = 0.2) drops beat as many of the blankest patches dropped", "SPEC 10",
     "no paper figure (Table II's +0.50 is against AWD)",
     ("awd_dip_vit", 0.1, 0.2), ("awd_dip_vit:blank", 0.1, 0.2)),
    ("T3", "WinfT beats ViT", "Table III (B/16, 224)", "83.11 vs 81.20 % (+1.91)",
     ("winft", 0.1, 0.0), ("vit", 1.0, 0.0)),
    ("T3b", "WinfT on the paper's responsive field (beta = 0.2) beats ViT",
     "Table III (B/16, 224)", "83.11 vs 81.20 % (+1.91)",
     ("winft", 0.1, 0.2), ("vit", 1.0, 0.0)),
)  # fmt: skip
# SPEC 10's rows: in a report only where both arms have a paired seed; a report whose facts
# list their arms as configured names the missing ones in one line (not_run_note)
OPTIONAL_CLAIMS = ("T1''", "T2''", "T3b")
TRAINED_MARGIN = 0.005  # SPEC 9: 0.5 percentage points
# the paper's effect each design must be able to see (pp, ImageNet-1k, B/16 at 224); WinfT's
# +2.56 is the abstract's average over the paper's structures and resolutions. The controls
# (T1', T1'', T2', T2'') have none: the paper runs no control
PAPER_EFFECT_PP = {"T1": 0.70, "T2": 0.50, "T3": 1.91, "T3b": 1.91}

RECORD_FIELDS = ("family", "control", "alpha", "beta", "img_size", "patch_size", "seed",
                 "status", "top1", "eo", "eo_ratio", "num_patches", "fit_seconds")  # fmt: skip
_INTS = ("img_size", "patch_size", "seed", "num_patches")
_FLOATS = ("alpha", "beta", "top1", "eo", "eo_ratio", "fit_seconds")


def label_of(family: str) -> str:
    return CONTROL_LABELS.get(family) or LABELS.get(family, family)


def arm_label(arm: tuple) -> str:
    """An arm's label; a WinfT arm trained on a field with drops (beta > 0) says its beta."""
    family, _, beta = arm
    return label_of(family) + (f" (beta = {beta:g})" if family == "winft" and beta > 0 else "")


def sign_flip_cell(row: dict[str, Any]) -> str:
    """The exact sign-flip p of a row with its count of 2^n patterns, e.g. "0.125 (2/16)";
    "n/a" below 2 paired seeds."""
    p = row.get("sign_flip_p")
    if p is None:
        return "n/a"
    patterns = 2 ** row["n"]
    return f"{p:.4g} ({round(p * patterns)}/{patterns})"


def _runs_of(rows: list[dict], spec: tuple, geometry: tuple) -> dict[int, dict]:
    family, alpha, beta = spec
    return {r["seed"]: r for r in rows
            if r["status"] == "ok" and r["family"] == family
            and math.isclose(r["alpha"], alpha) and math.isclose(r["beta"], beta)
            and (r["img_size"], r["patch_size"]) == geometry}  # fmt: skip


def trained_comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each trained claim at the first geometry, as a claims-table row: delta top-1 (treated -
    control, as a fraction) over the seeds where both finished, with a t interval over seeds,
    the exact two-sided sign-flip p over those seeds (``sign_flip_p``, None below 2), SPEC 9's
    margin verdict and MDE, and how many seeds lie on the claimed side; one pair gives no
    interval and the verdict inconclusive, none (an arm not run) the verdict "not run". A row
    of :data:`OPTIONAL_CLAIMS` with no paired seed is left out."""
    if not rows:
        return []
    geometry = min({(r["img_size"], r["patch_size"]) for r in rows}, key=lambda g: (g[0], -g[1]))
    out = []
    for cid, statement, paper, paper_values, treated, control in TRAINED_CLAIMS:
        a, b = _runs_of(rows, treated, geometry), _runs_of(rows, control, geometry)
        seeds = sorted(set(a) & set(b))
        if not seeds and cid in OPTIONAL_CLAIMS:
            continue
        deltas = [(a[s]["top1"] - b[s]["top1"]) / 100.0 for s in seeds]
        eo = statistics.fmean(a[s]["eo_ratio"] for s in seeds) if seeds else float("nan")
        row = {"id": cid, "claim": cid, "paper": paper, "statement": f"{statement}: {paper_values}",
               "measure": f"Δ top-1 {arm_label(treated)} − {arm_label(control)}, paired by "
                          "seed" + (f" ({arm_label(treated)} E_O / N² = {eo:.3f})" if seeds else ""),
               "null": 0.0, "direction": "greater", "n": len(seeds), "headline": True,
               "margin": TRAINED_MARGIN, "seeds_above_zero": sum(d > 0 for d in deltas),
               "sign_flip_p": sign_flip_p(deltas) if len(deltas) >= 2 else None,
               "details": {"seeds": seeds, "deltas": deltas, "eo_ratio": eo,
                           "geometry": list(geometry)}}  # fmt: skip
        interval = C.t_interval(deltas) if len(deltas) >= 2 else None
        if interval is None:
            row.update(effect=statistics.fmean(deltas) if deltas else float("nan"),
                       low=float("nan"), high=float("nan"), mde=float("nan"),
                       verdict=C.INCONCLUSIVE if deltas else C.NOT_RUN,
                       method="fewer than 2 paired seeds: no interval" if deltas else
                       "an arm was not run: no paired seed")  # fmt: skip
        else:
            row.update(effect=interval.estimate, low=interval.low, high=interval.high,
                       mde=C.mde(interval), method=interval.method,
                       verdict=C.margin_verdict(interval, TRAINED_MARGIN))  # fmt: skip
        out.append(row)
    return out


def not_run_note(comparisons: list[dict[str, Any]], facts: dict[str, Any]) -> str | None:
    """The one line naming the :data:`OPTIONAL_CLAIMS` left out of ``comparisons`` although
    the part's facts list both of their arms as configured (``facts["arms"]``); None when
    there are none (or the facts predate that list)."""
    arms = {(a[0], round(float(a[1]), 6), round(float(a[2]), 6)) for a in facts.get("arms") or []}
    shown = {c["id"] for c in comparisons}
    missing = [cid for cid, *_, treated, control in TRAINED_CLAIMS
               if cid in OPTIONAL_CLAIMS and cid not in shown
               and all((f, round(a, 6), round(b, 6)) in arms for f, a, b in (treated, control))]  # fmt: skip
    if not missing:
        return None
    return (f"Not run: {', '.join(missing)} (their arms are configured, but no seed of both "
            "finished).")  # fmt: skip


def trained_markdown(rows: list[dict[str, Any]]) -> str:
    """The trained comparisons: effect, t interval, exact sign-flip p, margin, MDE, seeds on
    the claimed side and SPEC 9's verdict."""
    lines = ["| claim | paper | statement | our measure | effect [95 % CI] | sign-flip p | margin | "
             "MDE | seeds > 0 | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["verdict"] == C.NOT_RUN:
            ci = "not run"
        elif math.isfinite(r["low"]):
            ci = f"{r['effect'] * 100:+.2f} pp [{r['low'] * 100:+.2f}, {r['high'] * 100:+.2f}]"
        else:
            ci = f"{r['effect'] * 100:+.2f} pp (no interval)"
        mde = f"{r['mde'] * 100:.2f} pp" if math.isfinite(r["mde"]) else "n/a"
        lines.append(f"| {r['id']} | {r['paper']} | {r['statement']} | {r['measure']} | {ci} | "
                     f"{sign_flip_cell(r)} | {r['margin'] * 100:g} pp | {mde} | "
                     f"{r['seeds_above_zero']} of {r['n']} | **{r['verdict']}** |")  # fmt: skip
    return "\n".join(lines) + "\n"


# ---- records -------------------------------------------------------------------------


def write_runs(rows: list[dict[str, Any]], path: Path) -> Path:
    """The students' records: one CSV row per run, floats written exactly (``repr``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in RECORD_FIELDS})
    tmp.replace(path)
    return path


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The rows :func:`write_runs` wrote, typed again (a blank number reads as NaN)."""
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = dict(raw)
            for k in _INTS:
                row[k] = int(raw[k]) if raw[k] else None
            for k in _FLOATS:
                row[k] = float(raw[k]) if raw[k] else float("nan")
            rows.append(row)
    return rows


def write_part(out_dir: Path, rows: list[dict[str, Any]], facts: dict[str, Any]) -> list[dict]:
    """Save the students' records and the part's facts under ``out_dir``, then rebuild the
    comparisons, report and figure from them (as ``recompute`` will)."""
    write_runs(rows, out_dir / "records" / "runs.csv")
    write_json_atomic(out_dir / "facts.json", facts)
    return rebuild(out_dir)


def rebuild(out_dir: str | Path) -> list[dict[str, Any]]:
    """Rebuild ``comparisons.json``, ``report.md`` and ``trained_deltas.png`` of a trained dir
    from its ``facts.json`` and ``records/runs.csv`` alone (the same bytes every time)."""
    out = Path(out_dir)
    for need in (out / "facts.json", out / "records" / "runs.csv"):
        if not need.is_file():
            raise FileNotFoundError(f"{need} is missing: not a trained dir written by the study")
    facts = json.loads((out / "facts.json").read_text())
    rows = read_runs(out / "records" / "runs.csv")
    comparisons = trained_comparisons(rows)
    (out / "comparisons.json").write_text(json.dumps(comparisons, indent=2))  # NaN: no interval
    from winft_lightning import figures

    figures.save(figures.trained_deltas_figure(comparisons), out / "trained_deltas.png")
    (out / "report.md").write_text(report_markdown(comparisons, rows, facts))
    return comparisons


def _arms_table(rows: list[dict[str, Any]]) -> list[str]:
    arms: dict[tuple, list[dict]] = {}
    for r in rows:
        arms.setdefault((r["family"], r["alpha"], r["beta"]), []).append(r)
    lines = ["| arm | alpha | beta | runs ok | top-1 % mean ± sd | fit s (mean) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for (family, alpha, beta), runs in arms.items():
        ok = [r for r in runs if r["status"] == "ok"]
        top1 = [r["top1"] for r in ok]
        sd = statistics.stdev(top1) if len(top1) > 1 else float("nan")
        mean = f"{statistics.fmean(top1):.2f} ± {sd:.2f}" if top1 else "-"
        fit = f"{statistics.fmean(r['fit_seconds'] for r in ok):.0f}" if ok else "-"
        lines.append(f"| {label_of(family)} | {alpha:g} | {beta:g} | {len(ok)} of {len(runs)} | "
                     f"{mean} | {fit} |")  # fmt: skip
    return lines


def _power_lines(comparisons: list[dict]) -> list[str]:
    """Each paper comparison's MDE beside the effect the paper reports, and which rows (the
    controls) have no paper effect to hold theirs against."""
    cells = [f"{c['id']} {c['mde'] * 100:.2f} pp against the paper's "
             f"+{PAPER_EFFECT_PP[c['id']]:.2f}" for c in comparisons
             if c["id"] in PAPER_EFFECT_PP and math.isfinite(c["mde"])]  # fmt: skip
    if not cells:
        return [""]
    controls = [c["id"] for c in comparisons if c["id"] not in PAPER_EFFECT_PP]
    none = (f" The controls ({', '.join(controls)}) have no paper effect (the paper trains no "
            "control): their MDE is in the table." if controls else "")  # fmt: skip
    return ["", "Power: the MDE (80 % power) of each paper comparison beside the paper's own "
            "effect: " + "; ".join(cells) + " (WinfT: +2.56 averaged over the paper's "
            "structures). A design whose MDE exceeds the paper's effect could not have seen "
            "it." + none, ""]  # fmt: skip


def report_markdown(comparisons: list[dict], rows: list[dict], facts: dict[str, Any]) -> str:
    wall = facts.get("wall", {})
    minutes = (wall.get("seconds") or 0) / 60
    note = not_run_note(comparisons, facts)
    lines = ["# The trained comparisons (Tables I-III and the retrained controls)", "",
             facts["machine"], "", f"Command: `{facts['command']}`; the part's wall time "
             f"{minutes:.1f} min (its sweeps, one after another).", "",
             f"Students: {facts['students']}. Seeds: {facts['seeds']}. Masks from: "
             f"{facts['teacher']}.", "",
             "Each row pairs two arms by seed: the delta of their top-1 on the whole test split, "
             "a t interval over seeds, the exact two-sided sign-flip p (the share of the 2^n "
             "sign patterns of the n paired deltas whose mean is at least as far from 0 as "
             "observed: never below 2/2^n, 0.125 at 4 seeds), SPEC 9's verdict with a 0.5 pp "
             "margin, and the MDE (the effect this design detects with 80 % power at its "
             "spread: noncentral t).", "",
             trained_markdown(comparisons), *([note] if note else []), *_power_lines(comparisons),
             "## Arms", "", *_arms_table(rows), "",
             "![paired differences](trained_deltas.png)", ""]  # fmt: skip
    return "\n".join(lines)
