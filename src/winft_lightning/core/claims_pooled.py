"""SPEC 10's headline over teachers: each claim row's per-teacher effects and standard errors
pooled by a random-effects meta-analysis (:func:`pooling.random_effects`), the row's rule
applied to the pooled interval, the headline rows' intervals simultaneous (Bonferroni), and
the power of each row stated both ways. Pure: rows in, rows out (no I/O).

A row is a dict of :func:`claims_table.summarise_claims` with ``teachers`` (per seed a cell
with ``effect``, ``se``, ``verdict``), ``margin``, ``rule`` and ``headline``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from winft_lightning.core import claims as C
from winft_lightning.core import pooling as P

__all__ = ["CONFIDENCE", "NO_HEADLINE", "pool_row", "pool_rows", "sensitivity_split"]

CONFIDENCE = 0.95  # the family's simultaneous confidence (SPEC 10)
NO_HEADLINE = "no headline verdict"  # K < pooling.MIN_TEACHERS: SPEC 10 gives none


def _usable(cell: Mapping[str, Any]) -> bool:
    se = cell.get("se")
    return (cell["verdict"] != C.NOT_RUN and cell.get("effect") is not None
            and se is not None and math.isfinite(se) and se > 0)  # fmt: skip


def pool_row(row: Mapping[str, Any], confidence: float) -> dict[str, Any]:
    """The pooled cell of one row at ``confidence``: ``k``, the interval (``effect``, ``low``,
    ``high``, ``se``, ``df``), ``tau2``, ``i2``, the verdict by the row's rule, and the power
    both ways (``supported_needs``: the effect a "supported" verdict needs at 80 % power;
    ``negligible_reachable``: the interval's half-width < the margin). ``verdict`` is "not
    run" when any teacher's cell was not run, and :data:`NO_HEADLINE` below K = 3 (or when a
    teacher's interval has no spread: nothing to weigh it by)."""
    cells = list(row["teachers"].values())
    k = len(cells)
    out: dict[str, Any] = {"k": k, "confidence": confidence, "effect": None, "low": None,
                           "high": None, "se": None, "df": None, "tau2": None, "i2": None,
                           "supported_needs": None, "negligible_reachable": None}  # fmt: skip
    if any(c["verdict"] == C.NOT_RUN for c in cells):
        return out | {"verdict": C.NOT_RUN}
    usable = [c for c in cells if _usable(c)]
    if k < P.MIN_TEACHERS or len(usable) < k:
        why = f"K = {k} < {P.MIN_TEACHERS}" if k < P.MIN_TEACHERS else "a teacher has no SE"
        return out | {"verdict": f"{NO_HEADLINE} ({why})"}
    pooled = P.random_effects([c["effect"] for c in usable], [c["se"] for c in usable],
                              confidence)  # fmt: skip
    ci, margin = pooled.interval, float(row["margin"])
    return out | {
        "effect": ci.estimate, "low": ci.low, "high": ci.high, "se": ci.se, "df": ci.df,
        "tau2": pooled.tau2, "i2": pooled.i2,
        "verdict": C.VERDICT_RULES[row["rule"]](ci, margin),
        "supported_needs": P.supported_needs(ci, margin, confidence),
        "negligible_reachable": P.negligible_reachable(ci, margin),
    }  # fmt: skip


def pool_rows(rows: Sequence[dict[str, Any]], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Every row's ``pooled`` cell (in place): the headline rows at the Bonferroni confidence
    that makes their intervals simultaneous at ``confidence``, the others at ``confidence``
    each. Each row's ``verdict`` becomes the pooled one and ``teacher_verdicts`` keeps the
    per-teacher common verdict as detail. Returns the family: its size and per-row confidence."""
    headline = [r for r in rows if r["headline"]]
    family = P.bonferroni(confidence, len(headline)) if headline else confidence
    for r in rows:
        r["pooled"] = pool_row(r, family if r["headline"] else confidence)
        r["teacher_verdicts"] = r["verdict"]
        r["verdict"] = r["pooled"]["verdict"]
    return {"rows": len(headline), "confidence": confidence, "per_row_confidence": family,
            "method": "random-effects meta-analysis over teachers (DerSimonian-Laird tau^2, "
                      "modified Hartung-Knapp-Sidik-Jonkman t interval on K - 1 df); headline "
                      "rows Bonferroni-simultaneous"}  # fmt: skip


def sensitivity_split(
    rows: Sequence[Mapping[str, Any]], kept: Sequence[Any], confidence: float = CONFIDENCE
) -> list[dict[str, Any]]:
    """SPEC 10's accuracy bar as a sensitivity split: each headline row pooled again over the
    teachers in ``kept`` only (those at or above the bar), by :func:`pool_rows` on copies (the
    family, its Bonferroni level and the rules unchanged; ``rows`` are not touched). Per
    headline row: ``id``, and the pooled ``k``, ``effect``, ``low``, ``high``, ``verdict`` of
    the subset."""
    wanted = {str(s) for s in kept}
    subset = [dict(r, teachers={s: c for s, c in r["teachers"].items() if str(s) in wanted})
              for r in rows]  # fmt: skip
    pool_rows(subset, confidence)
    fields = ("k", "effect", "low", "high", "verdict")
    return [{"id": r["id"], **{f: r["pooled"][f] for f in fields}} for r in subset if r["headline"]]
