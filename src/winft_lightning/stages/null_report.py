"""SPEC 10's randomisation null as a part of the claims report: per teacher, after its claims
pass, the claims about U (C1, C1b, keep, DIP's rank agreement with the blank order) measured
again on its re-initialised copies (:func:`winft_lightning.stages.null_claims.randomisation_null`)
on the first ``study.claims.randomisation_null.limit`` images of its pass, saved as records,
and rebuilt into the report's "Randomisation null (SPEC 10)" section and ``claims.json``'s
``null`` from them.

Records, beside the pass's in a claims dir::

    records/null_teacher_<seed>.npz   per variant (trained, all, cascade:k) every per-image
                                      value, named "<variant>/<column>", and the images' "key"
    records/null_teacher_<seed>.json  what it ran on (its stamp: reused when it matches)

The images are the pass's own: the first ones of its test split in the analyzed view (read by
:func:`.claims._test_split` / :func:`.claims._test_pass`), with its batch size, seed, image
keys and tie rule, so the trained variant's values are the pass's values on those images.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from winft_lightning.core import claims as C
from winft_lightning.core.claims_pooled import CONFIDENCE, NO_HEADLINE, pool_row
from winft_lightning.runtime.files import load_columns, save_columns, write_json_atomic

__all__ = ["load_null", "measure_null", "null_markdown", "null_result", "null_spec",
           "verdicts_sentence"]  # fmt: skip

log = logging.getLogger(__name__)

DEFAULT_SPEC = {"limit": 500, "modes": ["all", "cascade"], "depths": None}
RHO_NAME = "rho (DIP order vs blank order)"


def null_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """``study.claims.randomisation_null`` as the stamp keeps it: None (no null), else ``limit``
    (images per teacher, None: every image of the pass), ``modes`` and ``depths`` (None: 1 ..
    the blocks)."""
    if spec is None:
        return None
    unknown = set(spec) - set(DEFAULT_SPEC)
    if unknown:
        raise ValueError(f"study.claims.randomisation_null: unknown keys {sorted(unknown)} (known: "
                         f"{sorted(DEFAULT_SPEC)})")  # fmt: skip
    s = {**DEFAULT_SPEC, **spec}
    return {"limit": None if s["limit"] is None else int(s["limit"]),
            "modes": [str(m) for m in s["modes"]],
            "depths": None if s["depths"] is None else [int(d) for d in s["depths"]]}  # fmt: skip


def _paths(out_dir: Path, seed: int) -> tuple[Path, Path]:
    records = Path(out_dir) / "records"
    return records / f"null_teacher_{seed}.npz", records / f"null_teacher_{seed}.json"


def _images(teacher, settings: dict[str, Any], limit: int | None):
    """The teacher (timm, eval), its normalisation and grid, and the first ``limit`` images of
    the pass (``settings``' own limit too) in the analyzed view, 0..1, with their keys."""
    from winft_lightning.models.teacher import load_teacher, teacher_norm
    from winft_lightning.stages.claims import _test_pass, _test_split

    device = settings.get("device", "auto")
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    ckpt = Path(teacher.ckpt).expanduser()
    model, info = load_teacher(
        ckpt, device=dev, sha256=teacher.sha256, **(settings.get("net") or {})
    )
    limits = [int(v) for v in (limit, settings.get("limit")) if v is not None]
    dm, total = _test_split(ckpt, info, teacher.shards, int(settings["batch_size"]),
                            int(settings.get("num_workers", 0)),
                            min(limits) if limits else None)  # fmt: skip

    def keep(cols, x01, _labels, _keys) -> None:
        cols.setdefault("image", []).append(x01.cpu().numpy())

    cols = _test_pass(dm, total, keep, dev, False)
    images = torch.from_numpy(cols["image"]).to(dev)
    return model.eval(), teacher_norm(model, info), info.grid, images, [str(k) for k in cols["key"]]


def measure_null(teacher, settings: dict[str, Any], null: dict[str, Any], out_dir: Path
                 ) -> dict[str, Any]:  # fmt: skip
    """One teacher's randomisation null (``null`` as :func:`null_spec` gives it) with its pass's
    ``settings``, saved under ``records/``; reused when its stamp (teacher file hash, the
    pass's settings, the null's) matches, as :func:`.claims_report.measure_teacher` does."""
    from winft_lightning.stages.null_claims import randomisation_null

    npz, stamp_file = _paths(out_dir, teacher.seed)
    stamp = {"teacher_sha256": teacher.sha256, "settings": settings, "null": null}
    if npz.is_file() and stamp_file.is_file():
        facts = json.loads(stamp_file.read_text())
        if {k: facts.get(k) for k in stamp} == stamp:
            log.info("claims: teacher %d reusing the randomisation null %s", teacher.seed, npz)
            return facts
    start = time.perf_counter()
    model, norm, grid, images, keys = _images(teacher, settings, null["limit"])
    records = randomisation_null(
        model, images, norm, grid, settings, seed=int(settings["seed"]), modes=null["modes"],
        depths=null["depths"], limit=None, batch_size=int(settings["batch_size"]),
        keys=None if settings.get("ties", "key") == "index" else keys,
    )  # fmt: skip
    columns = {"key": np.asarray(keys)}
    columns |= {
        f"{v}/{name}": values for v, cols in records.items() for name, values in cols.items()
    }
    facts = {**stamp, "seed": teacher.seed, "images": len(keys), "variants": list(records),
             "blocks": len(model.blocks), "device": str(images.device),
             "threads": torch.get_num_threads(),
             "measure_seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    save_columns(npz, columns)
    write_json_atomic(stamp_file, facts)  # after the values: a stamp always has its values
    log.info("claims: teacher %d randomisation null (%d variants, %d images) in %.0f s",
             teacher.seed, len(records), len(keys), facts["measure_seconds"])  # fmt: skip
    return facts


def load_null(out_dir: Path, null_facts: dict[str, Any]) -> dict[int, dict[str, dict]]:
    """Each teacher's null records: ``{seed: {variant: columns}}`` in its stamp's order."""

    out = {}
    for p in null_facts["passes"]:
        npz, _ = _paths(out_dir, p["seed"])
        if not npz.is_file():
            raise FileNotFoundError(
                f"{npz} is missing: facts.json lists teacher {p['seed']}'s null"
            )
        cols = load_columns(npz)
        out[p["seed"]] = {v: {k.split("/", 1)[1]: a for k, a in cols.items()
                              if k.startswith(f"{v}/")} for v in p["variants"]}  # fmt: skip
    return out


def _pool(cells: dict[str, dict[str, Any]], margin: float | None) -> dict[str, Any]:
    """The cells pooled over teachers as the claims rows are (:func:`pool_row`, 95 % each); the
    agreement has no margin, so no verdict and no power."""
    row = {"teachers": cells, "margin": 1.0 if margin is None else margin, "rule": "margin"}
    pooled = pool_row(row, CONFIDENCE)
    if margin is None and pooled["effect"] is not None:
        pooled |= {"verdict": None, "supported_needs": None, "negligible_reachable": None}
    return pooled


def _survives(variant: dict[str, Any], margin: float | None) -> str | None:
    """Whether a row's effect survives the randomisation: its most randomised variant's verdict
    (pooled; below K = 3 the teachers' common one) "supported" -> "yes", "negligible" or
    "contradicted" -> "no", else "undecided"; None for the agreement (no margin)."""
    if margin is None:
        return None
    verdict = variant["pooled"]["verdict"]
    if verdict.startswith(NO_HEADLINE):
        verdict = C.common_verdict([c["verdict"] for c in variant["teachers"].values()])
    if verdict == C.SUPPORTED:
        return "yes"
    return "no" if verdict in (C.NEGLIGIBLE, C.CONTRADICTED) else "undecided"


def null_result(records: dict[int, dict[str, dict]], settings: dict[str, Any], n_patches: int,
                *, resamples: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """``claims.json``'s ``null``: per U row (C1, C1b, keep/alpha=..., the agreement) its
    ``margin``, ``unit`` and per variant (trained first) each teacher's cell
    (:func:`null_summary`: effect, 95 % bootstrap interval, se, verdict) and the ``pooled``
    cell over teachers; ``survives`` (:func:`_survives`) of the most randomised variant."""
    from winft_lightning.core.claims_table import row_specs
    from winft_lightning.stages.null_claims import AGREEMENT, _opts, null_summary

    per = {str(s): null_summary(rec, settings, n_patches, resamples=resamples, seed=seed)
           for s, rec in records.items()}  # fmt: skip
    first = next(iter(per.values()))
    variants = list(first)
    units = {r.id: r.unit for r in row_specs(_opts(settings), n_patches)}
    rows = []
    for row_id, cell in first["trained"].items():
        margin = cell["margin"]
        by_variant = {}
        for v in variants:
            cells = {s: per[s][v][row_id] for s in per}
            by_variant[v] = {"teachers": cells, "pooled": _pool(cells, margin)}
        last = "all" if "all" in by_variant else variants[-1]
        rows.append({"id": row_id, "name": RHO_NAME if row_id == AGREEMENT else row_id,
                     "margin": margin, "unit": units.get(row_id, ""), "variants": by_variant,
                     "survives": _survives(by_variant[last], margin)})  # fmt: skip
    return {"variants": variants, "most_randomised": "all" if "all" in variants else variants[-1],
            "confidence": CONFIDENCE, "bootstrap": {"resamples": resamples, "seed": seed},
            "rows": rows}  # fmt: skip


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:+.3f}"


def _interval(c: dict[str, Any], unit: str) -> str:
    """``effect [low, high]`` of a cell, C1b's in patches."""
    patches = " patches" if unit == "patches" else ""
    return f"{_fmt(c['effect'])} [{_fmt(c['low'])}, {_fmt(c['high'])}]{patches}"


def _cell(variant: dict[str, Any], unit: str, short: bool = False) -> str:
    """One variant's pooled effect [CI] and verdict (``short``: the effect alone); below K = 3
    (no pooled interval) each teacher's instead."""
    p = variant["pooled"]
    if p["effect"] is not None:
        if short:
            return _fmt(p["effect"])
        return _interval(p, unit) + ("" if p["verdict"] is None else f" **{p['verdict']}**")
    cells = variant["teachers"].values()
    if short:
        return " / ".join(_fmt(c["effect"]) for c in cells)
    each = "; ".join(_interval(c, unit) + ("" if c["verdict"] is None else f" {c['verdict']}")
                     for c in cells)  # fmt: skip
    return f"{p['verdict']}; per teacher: {each}"


def verdicts_sentence(facts: dict[str, Any]) -> str:
    """The Verdicts section's last sentence on the null: as before it was measured here (facts
    without ``null``: the reports made before), not run (``null`` None), or below."""
    chance = "accuracy rows (C2, C3) are never measured on a random teacher (it is at chance)."
    if "null" not in facts:
        return (
            "Not in this part: the randomisation null (`stages.null_claims`), which is "
            f"measured apart; {chance}"
        )
    if facts["null"] is None:
        return (
            "Not in this run: the randomisation null (`study.claims.randomisation_null` was "
            f"null); {chance}"
        )
    return f"The claims about U are also measured on re-initialised teachers (below); {chance}"


def _depth_table(result: dict[str, Any]) -> list[str]:
    """Each row's pooled effect per variant, from the trained teacher to every weight
    re-initialised: a compact view of where along the cascade an effect goes."""
    variants = result["variants"]
    lines = ["| claim | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    # C1b in patches, the others plain numbers
    for r in result["rows"]:
        cells = [_cell(r["variants"][v], r["unit"], short=True) for v in variants]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def null_markdown(result: dict[str, Any], null_facts: dict[str, Any]) -> list[str]:
    """The report's "Randomisation null (SPEC 10)" section: per U row the trained teacher's
    effect beside its fully randomised and deepest cascade variants' (pooled over teachers),
    whether the effect survives, then every variant's pooled effect by depth."""
    passes, spec = null_facts["passes"], null_facts["settings"]
    cascades = [v for v in result["variants"] if v.startswith("cascade:")]
    shown = [v for v in ("all", cascades[-1] if cascades else None) if v in result["variants"]]
    blocks = passes[0]["blocks"]
    images = " / ".join(f"{n:,}" for n in sorted({p["images"] for p in passes}))
    minutes = np.mean([p["measure_seconds"] for p in passes]) / 60
    lines = [
        "## Randomisation null (SPEC 10)", "",
        "Every claim about U measured again on each teacher with its weights re-initialised by "
        "timm's own init (Adebayo et al. 2018; one seed for every variant, so the cascade is "
        f"nested): `all` every weight; `cascade:k` the top (final norm, head) and the last k of "
        f"the {blocks} blocks. On the first {images} test images of each teacher's pass (its "
        "view, image keys, tie rule and random U' stream: the trained column is the pass's "
        f"values on them; `study.claims.randomisation_null`: {json.dumps(spec)}), "
        f"{minutes:.1f} min a teacher. Pooled over the {len(passes)} teachers as the claims "
        f"rows are (random effects), each interval at {result['confidence']:.0%} (not the "
        "headline family's simultaneous level); below K = 3 each teacher's own cell. C1b in "
        "patches.", "",
        "| claim | margin | trained | " + " | ".join(f"{v} randomised" for v in shown)
        + f" | survives ({result['most_randomised']}) |",
        "|---|---|---|" + "---|" * (len(shown) + 1),
    ]  # fmt: skip
    for r in result["rows"]:
        patches = " patches" if r["unit"] == "patches" else ""
        margin = "none" if r["margin"] is None else f"{r['margin']:.3f}{patches}"
        cells = [_cell(r["variants"][v], r["unit"]) for v in ("trained", *shown)]
        survives = "n/a (no margin)" if r["survives"] is None else r["survives"]
        lines.append(f"| {r['name']} | {margin} | " + " | ".join(cells) + f" | {survives} |")
    lines += ["", "A claim whose effect survives the randomisation (still \"supported\" with "
              "every weight re-initialised: \"yes\") is about the images, not about what the "
              "teacher learned; an effect \"supported\" on the trained teachers and "
              "\"negligible\" on their randomised copies is what they learned. The accuracy "
              "rows (C2, C3) are not measured on a random teacher: it is at chance.",
              "", "Pooled effect per variant (below K = 3: each teacher's, by seed):",
              ""]  # fmt: skip
    return [*lines, *_depth_table(result), ""]
