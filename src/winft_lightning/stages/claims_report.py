"""The training-free claims part of the study (SPEC 9): K teachers, one claims pass on each, the
per-image values saved as records, and the report rebuilt from those records alone.

Layout of a claims dir::

    records/teacher_<seed>.npz    every per-image value of one teacher's pass (columnar)
    records/teacher_<seed>.json   what that pass ran on (its stamp: reused when it matches)
    records/null_teacher_<seed>.*  its randomisation null (SPEC 10; :mod:`.null_report`)
    facts.json                    the part's settings, teachers, chance levels, wall times
    claims.json, report.md, claims_*.png   rebuilt by :func:`rebuild` from the three above

``python -m winft_lightning.study recompute=<dir>`` calls :func:`rebuild`: the same bytes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from winft_lightning.core import claims_table as T
from winft_lightning.runtime.files import load_columns, save_columns, write_json_atomic
from winft_lightning.stages.null_report import (
    load_null,
    null_markdown,
    null_result,
    verdicts_sentence,
)

__all__ = ["load_columns", "measure_teacher", "rebuild", "report_markdown", "save_columns"]

log = logging.getLogger(__name__)

FIGURES = ("verdicts", "c2", "c3_difference", "c3_curves", "attention_distance")


def distance_references(grid: list[int]) -> dict[str, float]:
    """The uniform-attention levels a mean attention distance is read against."""
    from winft_lightning.core.attention_distance import uniform_attention_distance

    refs = {"uniform over the grid": uniform_attention_distance(tuple(grid))}
    refs |= {f"uniform in {k}x{k}": uniform_attention_distance(tuple(grid), k) for k in (3, 5, 7)}
    return refs


def measure_teacher(teacher, settings: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """One teacher's pass, saved under ``records/``; reused when its stamp (teacher file hash
    and settings) matches. Returns the pass's facts."""
    from winft_lightning.stages.claims import collect_claims

    records = out_dir / "records"
    npz, stamp_file = (
        records / f"teacher_{teacher.seed}.npz",
        records / f"teacher_{teacher.seed}.json",
    )
    stamp = {"teacher_sha256": teacher.sha256, "settings": settings}
    if npz.is_file() and stamp_file.is_file():
        facts = json.loads(stamp_file.read_text())
        if {k: facts.get(k) for k in stamp} == stamp:
            log.info("claims: teacher %d reusing %s", teacher.seed, npz)
            return facts
    opts = {k: v for k, v in settings.items()}
    columns, facts = collect_claims(teacher.ckpt, teacher.shards, teacher_sha256=teacher.sha256,
                                    **opts)  # fmt: skip
    row = teacher.row or {}
    facts.update(stamp, seed=teacher.seed,
                 teacher_row={k: row.get(k) for k in ("top1", "top5", "fit_seconds", "epochs")})  # fmt: skip
    save_columns(npz, columns)
    write_json_atomic(stamp_file, facts)  # after the values: a stamp always has its values
    log.info("claims: teacher %d pass in %.0f s", teacher.seed, facts["measure_seconds"])
    return facts


def _figures(result: dict[str, Any], out_dir: Path, patch_size: int | None = None
             ) -> dict[str, Path]:  # fmt: skip
    from winft_lightning import figures

    curves, rows = result["curves"], result["claims"]
    teachers = curves["teachers"]
    margin = T.MARGINS["C3"]
    figs = {
        "verdicts": figures.verdict_figure([r for r in rows if r["headline"]]),
        "c2": figures.difference_figure(
            curves["alphas"],
            {f"AWD minus {c} windows": {s: t["c2_difference"][c] for s, t in teachers.items()}
             for c in ("random", "centred")},
            margin=T.MARGINS["C2"], xlabel="α", log_x=True,
            title="C2: top-1 under AWD(α) windows minus a control of the same w×h (paired)",
        ),
        "c3_difference": figures.difference_figure(
            curves["betas"][1:],
            {f"vs {T.BASELINE_NAMES[b]}": {s: t["c3_difference"][b] for s, t in teachers.items()}
             for b in T.ORDERINGS},
            margin=margin, xlabel="β (share of patches dropped)",
            title="C3: top-1 dropping the lowest-U-variance patches minus dropping a baseline's",
        ),
        "c3_curves": figures.perturbation_curves_figure(
            curves["betas"], {s: t["accuracy"] for s, t in teachers.items()},
            {o: ("U column variance (DIP)" if o == "variance" else T.BASELINE_NAMES[o])
             for o in T.ORDERINGS},
        ),
    }  # fmt: skip
    if result.get("attention_profile"):
        n, grid = result["N"], result["grid"]
        figs["attention_distance"] = figures.attention_distance_figure(
            result["attention_profile"], distance_references(grid),
            f"Mean attention distance per block and head ({grid[0]} x {grid[1]} grid, N = {n}; "
            "class token excluded)", patch_size=patch_size,
        )  # fmt: skip
    return {name: figures.save(fig, out_dir / f"claims_{name}.png") for name, fig in figs.items()}


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def report_markdown(result: dict[str, Any], facts: dict[str, Any]) -> str:
    """The claims part's report, from the summary and the saved facts only."""
    t0 = facts["passes"][0]
    n, grid = t0["N"], t0["grid"]
    source = t0.get("source") or {}
    lines = [
        f"# Training-free claims (SPEC 9): {source.get('name', 'the data')} at "
        f"{t0['view']['img_size']} px, patch {t0['teacher']['patch_size']} "
        f"({grid[0]} x {grid[1]} grid, N = {n})", "",
        facts["machine"], "", f"Command: `{facts['command']}`", "",
        "## Teachers", "",
        "| seed | test top-1 % | epochs | fit (min) | claims pass: images | pass (min) |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for p in facts["passes"]:
        row = p["teacher_row"]
        top1 = "n/a" if row.get("top1") is None else f"{row['top1']:.2f}"
        if p["seed"] in (result.get("accuracy_bar") or {}).get("below", []):
            top1 += " (below the bar)"
        lines.append(f"| {p['seed']} | {top1} | {row.get('epochs')} | "
                     f"{_minutes(row.get('fit_seconds'))} | {p['images']:,} of "
                     f"{p['split_images']:,} ({_which_images(p)}) | "
                     f"{_minutes(p['measure_seconds'])} |")  # fmt: skip
    lines += ["", _wall_line(facts["wall"]), "",
              "## Verdicts", "", T.claims_markdown(result), result["rule"],
              "Effects are signed so that the claim predicts > 0. Margins were declared in "
              "SPEC 9 before the run. SPEC 10: the teacher is the unit; a claim's verdict is "
              "the rule applied to the interval pooled over the teachers (random effects), "
              "none below K = 3; each teacher's own cell and verdict are detail. Every "
              "teacher this recipe trained is in the table, whatever its accuracy. "
              + verdicts_sentence(facts), ""]  # fmt: skip
    lines += _bar_markdown(result)
    if result.get("null"):
        lines += null_markdown(result["null"], facts["null"])
    chance = facts["keep_chance"]
    lines += ["## The keep fraction against chance", "",
              "| alpha | teacher | kept(U) | kept(random U') |", "|---|---|---|---|"]  # fmt: skip
    for seed, levels in result["keep_levels"].items():
        for a, (real, null) in levels.items():
            lines.append(f"| {a} | {seed} | {real:.4f} | {null:.4f} |")
    paper = chance["paper"]
    lines += ["", f"A U with no structure (i.i.d. entries, {paper['images']} draws), by the "
              f"same code: at the paper's N = {paper['N']}, alpha = {paper['alpha']:g}, the "
              f"windows keep {paper['mean']:.4f} of N² (range {paper['min']:.4f} to "
              f"{paper['max']:.4f}); here at N = {chance['here']['N']}: "
              f"{chance['here']['mean']:.4f}. The paper's 8,866 / 38,416 = {T.KEEP_PAPER:.4f} "
              f"is {1 - T.KEEP_PAPER / paper['mean']:.3f} below its own chance level on the "
              "keep-fraction effect scale (1 - kept / chance).", ""]  # fmt: skip
    lines += _profile_markdown(result, grid, facts["settings"]["locality_alpha"])
    if facts.get("reference"):
        lines += grid_table(facts["reference"], result)
    lines += ["## Every row", "", T.claims_markdown(result, headline_only=False), "",
              "## Figures", ""]  # fmt: skip
    lines += [f"![{name}](claims_{name}.png)" for name in FIGURES
              if name != "attention_distance" or result.get("attention_profile")]  # fmt: skip
    return "\n".join(lines) + "\n"


def _wall_line(wall: dict[str, Any]) -> str:
    """The part's wall time: the teachers' fits, the claims passes and (when it ran) the
    randomisation null."""
    null = wall.get("null_seconds")
    total = wall["teachers_seconds"] + wall["passes_seconds"] + (null or 0.0)
    null_part = "" if null is None else f"randomisation null {_minutes(null)} min, "
    return (f"Wall time of the part: teachers {_minutes(wall['teachers_seconds'])} min (their "
            f"fit times), claims passes {_minutes(wall['passes_seconds'])} min, {null_part}"
            f"in all {_minutes(total)} min.")  # fmt: skip


def _which_images(p: dict[str, Any]) -> str:
    limit = ((p.get("source") or {}).get("limit") or {}).get("test")
    subset = f"a seeded subset: data.source.limit.test={limit}" if limit else "the whole split"
    return subset if p["images"] == p["split_images"] else "the first, in stream order"


def reference_of(claims: dict[str, Any], label: str) -> dict[str, Any]:
    """What :func:`grid_table` needs of another claims report (its ``claims.json``): each
    headline row's id, unit, verdict and every teacher's effect and interval."""
    keep = ("effect", "low", "high", "verdict")
    return {"label": label, "N": claims["N"],
            "claims": [{"id": r["id"], "unit": r.get("unit", ""), "verdict": r["verdict"],
                        "teachers": {s: {k: c[k] for k in keep} for s, c in r["teachers"].items()}}
                       for r in claims["claims"] if r["headline"]]}  # fmt: skip


def _cell(row: dict[str, Any]) -> str:
    cells = [c for c in row["teachers"].values() if c["effect"] is not None]
    if not cells:
        return f"no interval → {row['verdict']}"
    effects = [c["effect"] for c in cells]
    lows, highs = min(c["low"] for c in cells), max(c["high"] for c in cells)
    return (f"{np.mean(effects):+.4g} (teachers {min(effects):+.4g} to {max(effects):+.4g}; "
            f"CIs within [{lows:+.4g}, {highs:+.4g}]) → **{row['verdict']}**")  # fmt: skip


def verdict_moves(here: dict[str, Any], there: dict[str, Any]) -> bool:
    """Whether a claim's verdict differs between two reports: the set of its teachers' own
    verdicts, not how many teachers gave each (the reports may have different K)."""
    kinds = [{c["verdict"] for c in r["teachers"].values()} for r in (here, there)]
    return kinds[0] != kinds[1]


def grid_table(reference: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Every headline claim here beside the same claim in ``reference`` (another report,
    :func:`reference_of`: another grid's, or at the same grid another teacher family's): the
    mean effect over teachers, the range of their effects and CIs, the verdict in each, and
    whether the verdict moves (:func:`verdict_moves`)."""
    here = {r["id"]: r for r in result["claims"] if r["headline"]}
    same_grid = reference["N"] == result["N"]  # then the reports differ in their teachers
    names = ((reference["label"], "this report") if same_grid else
             (f"N = {reference['N']}", f"N = {result['N']}"))  # fmt: skip
    lines = [f"## Beside {reference['label']}", "",
             f"| claim | {names[0]} | {names[1]} | verdict moves |",
             "|---|---|---|---|"]  # fmt: skip
    moved = []
    for ref in reference["claims"]:
        row = here.get(ref["id"])
        if row is None:
            continue
        moves = verdict_moves(row, ref)
        moved += [ref["id"]] if moves else []
        lines.append(f"| {ref['id']} | {_cell(ref)} | {_cell(row)} | {'yes' if moves else 'no'} |")
    if same_grid:
        said = ", ".join(moved) or "none"
        return [*lines, "", f"Verdicts that move between the two reports: {said} (a move: "
                "the set of the teachers' own verdicts changes). Effects are in each "
                f"row's unit. Both are at N = {result['N']}: they differ in their teachers (each "
                "report's command and its teachers' net: the family, e.g. a distance bias or "
                "mimetic init), so a move is the family's where nothing else differs, and a "
                "move that is only a wider interval is no move of the effect.", ""]  # fmt: skip
    lines += ["", f"Verdicts that move with the grid: {', '.join(moved) or 'none'} (a move: the "
              "set of the teachers' own verdicts changes). Effects are in each row's unit; "
              "C1b's margin scales with N (SPEC 9). The comparison is confounded: the two "
              "reports differ in more than N (their images, K, heads, depth and patch size: "
              "see each report's teachers and command), so a move is not N's alone, and a "
              "move that is only a wider interval is no move of the effect.", ""]  # fmt: skip
    return lines


def _profile_markdown(result: dict[str, Any], grid: list[int], alpha: float) -> list[str]:
    """Each teacher's mean attention distance per block (mean over heads, min-max over heads)
    in patches and as a fraction of uniform attention over the grid, the share of the block's
    heads over every teacher at or below the 5 x 5 reference (issue 33: the pretrained-ViT
    shape has several), and U's hits beside."""
    profile = result.get("attention_profile")
    if not profile:
        return []
    refs = distance_references(grid)
    ceiling, local = refs["uniform over the grid"], refs["uniform in 5x5"]
    seeds = list(profile)
    lines = ["## Mean attention distance (Dosovitskiy et al. 2021, Fig. 7)", "",
             "Per block, the attention-weighted mean grid distance from each query patch to the "
             "key patches (class token excluded, weights renormalised over the patches), mean "
             "over images; mean over heads [min, max], and / uniform over the grid. References: "
             + ", ".join(f"{k} {v:.3f}" for k, v in refs.items()) + " patches. The last "
             "column counts the block's heads, over every teacher, whose mean distance is at or "
             "below the 5x5 reference.", "",
             "| block | " + " | ".join(f"teacher {s}" for s in seeds) + " | heads <= 5x5 |",
             "|---|" + "---|" * (len(seeds) + 1)]  # fmt: skip
    for b in range(len(profile[seeds[0]]["blocks"])):
        cells, every = [], []
        for s in seeds:
            heads = profile[s]["blocks"][b]
            mean = float(np.mean(heads))
            every += heads
            cells.append(f"{mean:.3f} [{min(heads):.3f}, {max(heads):.3f}] ({mean / ceiling:.2f})")
        near = sum(h <= local for h in every)
        cells.append(f"{near} of {len(every)} ({near / len(every):.0%})")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    hits = " | ".join(
        f"{profile[s]['hits']:.3f} ({profile[s]['hits'] / ceiling:.2f})" for s in seeds
    )
    lines += [f"| U' hits at alpha={alpha:g} (mean d_p) | {hits} | |", ""]
    return lines


def rebuild(out_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``claims.json``, ``report.md`` and the figures of a claims dir from its
    ``facts.json`` and records alone (deterministic: the same bytes every time)."""
    out = Path(out_dir)
    facts_file = out / "facts.json"
    if not facts_file.is_file():
        raise FileNotFoundError(f"{out} has no facts.json: not a claims dir written by the study")
    facts = json.loads(facts_file.read_text())
    records = {}
    for p in facts["passes"]:
        path = out / "records" / f"teacher_{p['seed']}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: facts.json lists teacher {p['seed']}")
        records[p["seed"]] = load_columns(path)
    settings, first = facts["settings"], facts["passes"][0]
    result = T.summarise_claims(records, settings, first["N"], resamples=facts["resamples"],
                                seed=settings["seed"])  # fmt: skip
    result["N"], result["grid"] = first["N"], first["grid"]
    if facts.get("min_top1") is not None:
        result["accuracy_bar"] = accuracy_bar(result["claims"], facts)
    if facts.get("null"):  # SPEC 10's randomisation null, beside the trained teachers' values
        records = load_null(out, facts["null"])
        result["null"] = null_result(records, settings, first["N"], resamples=facts["resamples"],
                                     seed=settings["seed"])  # fmt: skip
    write_json_atomic(out / "claims.json", result)
    _figures(result, out, first.get("teacher", {}).get("patch_size"))
    (out / "report.md").write_text(report_markdown(result, facts))
    return result


def accuracy_bar(rows: list[dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    """SPEC 10's accuracy bar (the recipe's ``min_top1``, %) as a sensitivity split, never a
    filter: the teachers below it, and the headline rows pooled without them
    (:func:`claims_pooled.sensitivity_split`; empty when every teacher reached it)."""
    from winft_lightning.core.claims_pooled import sensitivity_split

    bar = float(facts["min_top1"])
    top1 = {p["seed"]: (p.get("teacher_row") or {}).get("top1") for p in facts["passes"]}
    below = [s for s, t in top1.items() if t is not None and t < bar]
    above = [s for s in top1 if s not in below]
    return {"min_top1": bar, "below": below,
            "rows": sensitivity_split(rows, above) if below else []}  # fmt: skip


def _bar_markdown(result: dict[str, Any]) -> list[str]:
    """The sensitivity split's section: each headline row's pooled verdict with every teacher
    and without those below the bar."""
    bar = result.get("accuracy_bar")
    if not bar:
        return []
    head = [f"## Sensitivity: the accuracy bar ({bar['min_top1']:g} % top-1)", ""]
    if not bar["below"]:
        return [*head, "Every teacher reached the bar: there is nothing to split.", ""]
    full = {r["id"]: r["pooled"] for r in result["claims"] if r["headline"]}

    def cell(c: dict[str, Any]) -> str:
        if c["effect"] is None:
            return f"K = {c['k']}: {c['verdict']}"
        return (
            f"K = {c['k']}: {c['effect']:+.3g} [{c['low']:+.3g}, {c['high']:+.3g}] {c['verdict']}"
        )

    lines = [
        *head,
        f"Teachers below the bar: {', '.join(map(str, bar['below']))}. They stay in every table "
        "above (SPEC 10: a bar is a sensitivity split, never a filter); here each headline row "
        "is pooled again without them. A verdict that changes depends on which teachers count.",
        "", "| claim | every teacher | at or above the bar | changes |", "|---|---|---|---|",
    ]  # fmt: skip
    for r in bar["rows"]:
        a = full[r["id"]]
        moved = "yes" if a["verdict"] != r["verdict"] else "no"
        lines.append(f"| {r['id']} | {cell(a)} | {cell(r)} | {moved} |")
    return [*lines, ""]


def part_facts(passes, settings, resamples, machine, command, keep_chance, teachers_seconds,
               passes_seconds, null=None) -> dict[str, Any]:  # fmt: skip
    """The part's ``facts.json``. ``null``: ``(the null's settings or None, its passes)`` when the
    study states ``study.claims.randomisation_null`` (SPEC 10; facts without it are the reports
    made before it)."""
    facts = {"machine": machine, "command": command, "settings": settings,
             "resamples": resamples, "passes": passes, "keep_chance": keep_chance,
             "wall": {"teachers_seconds": teachers_seconds, "passes_seconds": passes_seconds,
                      "finished": time.strftime("%Y-%m-%d %H:%M:%S")}}  # fmt: skip
    if null is not None:
        spec, null_passes = null
        facts["null"] = None if spec is None else {"settings": spec, "passes": null_passes}
        if spec is not None:
            facts["wall"]["null_seconds"] = round(sum(p["measure_seconds"] for p in null_passes), 1)
    return facts
