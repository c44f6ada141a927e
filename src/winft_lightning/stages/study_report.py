"""The study's report: one row per run (``results.csv``), mean ± std per row of Tables I-III
(``summary.csv``), the trained comparisons paired by seed, and ``report.md`` with the claims
table first (training-free verdicts by SPEC 9's rule from the claims part, trained comparisons by
the same rule, :func:`winft_lightning.core.claims.margin_verdict`, with a 0.5 pp margin).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from winft_lightning.core.families import BY_MODULE, BY_NAME
from winft_lightning.stages.trained_report import (
    CONTROL_LABELS,
    trained_comparisons,
    trained_markdown,
    write_part,
)

log = logging.getLogger(__name__)

FAMILIES = tuple(BY_NAME)  # the table's order is the report's order
LABELS = {f.name: f.label for f in BY_NAME.values()}
MODULE_FAMILY = {module: f.name for module, f in BY_MODULE.items()}

# The paper's ImageNet-1k figures (Tables I-III, ViT-B/16 at 224 unless stated), for reference.
PAPER_TABLE_I = {1.0: (38416, 81.20), 0.5: (38334, 81.62), 0.2: (10283, 81.25),
                 0.1: (8866, 81.90), 0.05: (6801, 80.60), 0.025: (4971, 78.28)}  # fmt: skip
PAPER_TABLE_II = {0.0: (8866, 81.90), 0.1: (7982, 82.09), 0.2: (7080, 82.40), 0.5: (4420, 80.62)}
PAPER_TABLE_III = {("ViT", "B/32", 224): (74.46, 2401), ("ViT", "B/32", 384): (81.28, 20736),
                   ("ViT", "B/16", 224): (81.20, 38416), ("ViT", "B/16", 384): (83.61, 331776),
                   ("WinfT", "B/32", 224): (78.74, 906), ("WinfT", "B/32", 384): (84.33, 8638),
                   ("WinfT", "B/16", 224): (83.11, 16938), ("WinfT", "B/16", 384): (84.62, 136327)}  # fmt: skip

RUN_FIELDS = ["family", "control", "alpha", "beta", "img_size", "patch_size", "seed", "status", "top1",
              "top5", "val_top1", "eo", "eo_ratio", "num_patches", "images_per_s", "fit_seconds",
              "run_dir", "error"]  # fmt: skip


def collect_runs(study_dir: Path) -> list[dict[str, Any]]:
    """One row per job dir (``results.json`` or ``failed.json`` + its ``.hydra/config.yaml``)."""
    rows = []
    for cfg_file in sorted(study_dir.glob("runs/**/.hydra/config.yaml")):
        job = cfg_file.parent.parent
        cfg = yaml.safe_load(cfg_file.read_text())
        model = cfg["model"]
        family = MODULE_FAMILY.get(model["_target_"].rsplit(".", 1)[-1], "?")
        control = (cfg.get("data") or {}).get("control")
        row: dict[str, Any] = {
            # a retrained control arm (SPEC 9) is its own row: "awd_vit:random"
            "family": f"{family}:{control}" if control else family,
            "control": control or "",
            # the run's own values; a ViT's full attention is alpha = 1 (the whole grid)
            "alpha": float(model["alpha"]) if model.get("alpha") is not None else 1.0,
            "beta": float(model.get("beta") or 0.0),
            "img_size": int(model["net"]["img_size"]),
            "patch_size": int(model["net"]["patch_size"]),
            "seed": int(cfg["seed"]),
            "run_dir": str(job),
        }
        if (job / "results.json").is_file():
            row.update({k: v for k, v in json.loads((job / "results.json").read_text()).items()
                        if k in RUN_FIELDS and k not in row})  # fmt: skip
            row["status"] = "ok"
        elif (job / "failed.json").is_file():
            row["status"] = "failed"
            row["error"] = json.loads((job / "failed.json").read_text())["error"]
        else:
            row["status"] = "incomplete"
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    std = statistics.stdev(values) if len(values) > 1 else 0.0  # sample std over seeds
    return statistics.fmean(values), std


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each (family, alpha, beta, geometry) row."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["family"], r["alpha"], r["beta"], r["img_size"], r["patch_size"])].append(r)
    out = []
    for (family, alpha, beta, img, patch), runs in sorted(groups.items(), key=_order):
        ok = [r for r in runs if r["status"] == "ok"]
        agg = {"family": family, "alpha": alpha, "beta": beta, "img_size": img,
               "patch_size": patch, "runs": len(runs), "ok": len(ok),
               "failed": len(runs) - len(ok)}  # fmt: skip
        for key in ("top1", "top5", "eo", "eo_ratio", "images_per_s"):
            agg[f"{key}_mean"], agg[f"{key}_std"] = _mean_std([r.get(key) for r in ok])
        out.append(agg)
    return out


def _order(item: tuple) -> tuple:
    (family, alpha, beta, img, patch), _ = item
    return (img, -patch, FAMILIES.index(family) if family in FAMILIES else 9, -alpha, beta)


def _pm(agg: dict, key: str, fmt: str) -> str:
    mean, std = agg[f"{key}_mean"], agg[f"{key}_std"]
    if math.isnan(mean):
        return "-"
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def _status(agg: dict) -> str:
    return "" if agg["failed"] == 0 else f" **FAILED {agg['failed']}/{agg['runs']}**"


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in RUN_FIELDS})


def report_markdown(aggs: list[dict[str, Any]], title: str, machine: str) -> str:
    """The study's ``report.md`` body: per geometry Tables I and II (and the retrained controls)
    of the aggregated rows ``aggs`` beside the paper's, then Table III across geometries."""
    lines = [f"# {title}", "", machine, "",
             "Ours: Fashion-MNIST, mean ± sample std over seeds (n in brackets). Paper: ImageNet-1k, "
             "ViT-B/16 at 224 (Tables I-II) and the printed Table III, **for reference only**: "
             "different data, models and scale.", ""]  # fmt: skip
    geoms = sorted({(a["img_size"], a["patch_size"]) for a in aggs}, key=lambda g: (g[0], -g[1]))
    for img, patch in geoms:
        at = [a for a in aggs if (a["img_size"], a["patch_size"]) == (img, patch)]
        n = (img // patch) ** 2
        lines += [f"## {img} px, patch {patch} (N = {n}, N² = {n * n})", ""]
        lines += [*_table_i(at), *_table_ii(at), *_controls_table(at), ""]
    return "\n".join([*lines, *_table_iii(aggs)])


def _paper_cells(paper: tuple[int | None, float | None]) -> list[str]:
    """The paper's E_O and top-1 cells of a table row ("-" where the paper has none)."""
    return [
        "-" if paper[0] is None else f"{paper[0]:,}",
        "-" if paper[1] is None else f"{paper[1]}",
    ]


def _row(a: dict[str, Any], *cells: str) -> str:
    """A table row of the aggregate ``a``: its family's label with the runs' count (and its
    failures), then ``cells``."""
    label = a.get("label") or LABELS[a["family"]]
    return " | ".join([f"| {label} (n={a['ok']}){_status(a)}", *cells]) + " |"


def _table_i(at: list[dict[str, Any]]) -> list[str]:
    """Table I of one geometry's rows ``at``: ViT and AWD over alpha, the paper's figures
    beside."""
    lines = ["### Table I: AWD over alpha", "",
             "| method | alpha | E_O (ours) | E_O / N² | top-1 % (ours) | E_O (paper) | top-1 % (paper) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in at:
        if a["family"] in ("vit", "awd_vit") and a["beta"] == 0.0:
            paper = PAPER_TABLE_I.get(a["alpha"], (None, None))
            lines.append(_row(a, f"{a['alpha']:g}", _pm(a, "eo", "{:,.0f}"),
                              _pm(a, "eo_ratio", "{:.3f}"), _pm(a, "top1", "{:.2f}"),
                              *_paper_cells(paper)))  # fmt: skip
    return lines


def _table_ii(at: list[dict[str, Any]]) -> list[str]:
    """Table II of one geometry's rows ``at``: AWD + DIP over beta, with the AWD rows of the
    same alphas, the paper's figures beside (at alpha 0.1)."""
    lines = ["", "### Table II: AWD + DIP over beta", "",
             "| method | alpha | beta | E_O (ours) | top-1 % (ours) | E_O (paper) | top-1 % (paper) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    dip_alpha = {a["alpha"] for a in at if a["family"] == "awd_dip_vit"}
    for a in at:
        base = a["family"] == "awd_vit" and a["alpha"] in dip_alpha
        if a["family"] == "awd_dip_vit" or base:
            paper = (
                PAPER_TABLE_II.get(a["beta"], (None, None)) if a["alpha"] == 0.1 else (None, None)
            )
            lines.append(_row(a, f"{a['alpha']:g}", f"{a['beta']:g}", _pm(a, "eo", "{:,.0f}"),
                              _pm(a, "top1", "{:.2f}"), *_paper_cells(paper)))  # fmt: skip
    return lines


def _controls_table(at: list[dict[str, Any]]) -> list[str]:
    """The retrained controls (SPEC 9, 10) of one geometry's rows ``at``; none: no lines."""
    controls = [a for a in at if a["family"] in CONTROL_LABELS]
    if not controls:
        return []
    lines = ["### Retrained controls (SPEC 9, 10)", "",
             "| method | alpha | beta | E_O (ours) | top-1 % (ours) |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {CONTROL_LABELS[a['family']]} (n={a['ok']}){_status(a)} | "
              f"{a['alpha']:g} | {a['beta']:g} | {_pm(a, 'eo', '{:,.0f}')} | "
              f"{_pm(a, 'top1', '{:.2f}')} |" for a in controls]  # fmt: skip
    return [*lines, ""]


def _table_iii(aggs: list[dict[str, Any]]) -> list[str]:
    """Table III: ViT vs WinfT across geometries, with the paper's printed figures."""
    lines = ["## Table III: ViT vs WinfT across geometries", "",
             "| method | image | patch | top-1 % (ours) | E_O (ours) | E_O / N² | train img/s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in aggs:
        if a["family"] in ("vit", "winft"):
            if a["beta"] > 0:  # WinfT on a responsive field with drops (SPEC 10: beta 0.2)
                a = {**a, "label": f"WinfT (beta = {a['beta']:g})"}
            lines.append(_row(a, f"{a['img_size']}", f"{a['patch_size']}", _pm(a, "top1", "{:.2f}"),
                              _pm(a, "eo", "{:,.0f}"), _pm(a, "eo_ratio", "{:.3f}"),
                              _pm(a, "images_per_s", "{:.0f}")))  # fmt: skip
    lines += ["", "Paper (ImageNet-1k, Table III): "
              + "; ".join(f"{m}-{p} {r}: {acc:.2f} % (E_O {eo:,})"
                          for (m, p, r), (acc, eo) in PAPER_TABLE_III.items()), ""]  # fmt: skip
    return lines


# ---- the claims table -------------------------------------------------------------


def claims_section(claims: dict[str, Any] | None, trained: list[dict[str, Any]]) -> str:
    """The training-free claims (the claims part's verdict table, SPEC 9) and the trained
    comparisons (paired by seed, SPEC 8's rule)."""
    from winft_lightning.core.claims_table import claims_markdown

    lines = ["## Claims", ""]
    if claims:
        lines += ["Training-free claims on the study's teachers (SPEC 9; the full part, with "
                  "every row and figure, is [claims/report.md](claims/report.md)):", "",
                  claims_markdown(claims), claims["rule"], ""]  # fmt: skip
    if trained:
        lines += ["Trained comparisons: students on the study's train subset, paired by seed "
                  "(t interval over seeds and the exact sign-flip p; verdict by SPEC 9's rule with a "
                  "0.5 pp margin; MDE from the noncentral t at 80 % power).", "", trained_markdown(trained)]  # fmt: skip
    return "\n".join(lines)


def write_report(
    study_dir: Path,
    title: str,
    machine: str,
    claims: dict[str, Any] | None = None,
    trained_facts: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Aggregate the study dir's runs into results.csv, summary.csv, comparisons.json and
    report.md (claims table first: ``claims``' training-free rows, then the trained ones);
    with ``trained_facts``, also the trained part's records and its own report under
    ``trained/`` (:mod:`winft_lightning.stages.trained_report`)."""
    rows = collect_runs(study_dir)
    paths = {"results": study_dir / "results.csv", "summary": study_dir / "summary.csv",
             "report": study_dir / "report.md", "comparisons": study_dir / "comparisons.json"}  # fmt: skip
    if not rows:
        if not claims:
            raise FileNotFoundError(f"no runs under {study_dir / 'runs'} and no claims")
        report = f"# {title}\n\n{machine}\n\n{claims_section(claims, [])}"
        paths["report"].write_text(report)
        return {"report": paths["report"]}
    aggs = aggregate(rows)
    write_results_csv(rows, paths["results"])
    with paths["summary"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(aggs[0]))
        writer.writeheader()
        writer.writerows(aggs)
    if trained_facts is not None:  # the part's records, and its comparisons rebuilt from them
        trained = write_part(study_dir / "trained", rows, trained_facts)
    else:
        trained = trained_comparisons(rows)
    paths["comparisons"].write_text(json.dumps(trained, indent=2))  # NaN where no interval
    report = report_markdown(aggs, title, machine)
    head, _, rest = report.partition("\n\n")  # the title, then the claims table
    report = f"{head}\n\n{claims_section(claims, trained)}\n{rest}"
    try:
        from winft_lightning import figures

        fig = figures.tradeoff_figure([r for r in rows if r["status"] == "ok"])
        paths["tradeoff"] = study_dir / "tradeoff.png"
        figures.save(fig, paths["tradeoff"])
        report += "\n![accuracy vs E_O](tradeoff.png)\n"
    except (ImportError, AttributeError) as err:  # figures are optional for the numbers
        log.warning("no trade-off plot: %s", err)
    paths["report"].write_text(report)
    return paths
