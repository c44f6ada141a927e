"""SPEC 10's headline over teachers (core/claims_pooled.py) on planted per-teacher cells: the
pooled interval is pooling.random_effects' at the Bonferroni confidence for headline rows, the
row's own rule decides, K < 3 gives no headline verdict, a row not run stays "not run"."""

from __future__ import annotations

import pytest

from winft_lightning.core import claims as C
from winft_lightning.core import pooling as P
from winft_lightning.core.claims_pooled import NO_HEADLINE, pool_row, pool_rows, sensitivity_split


def _row(effects, ses, *, headline=True, rule="margin", margin=0.5, verdict="supported"):
    cells = {str(i): {"effect": e, "se": s, "verdict": verdict} for i, (e, s) in
             enumerate(zip(effects, ses, strict=True))}  # fmt: skip
    return {"teachers": cells, "margin": margin, "rule": rule, "headline": headline,
            "verdict": C.common_verdict([c["verdict"] for c in cells.values()])}  # fmt: skip


def test_headline_rows_are_pooled_at_the_bonferroni_confidence():
    rows = [_row([2.0, 2.1, 1.9, 2.05, 1.95], [0.1] * 5), _row([1.0, 1.2, 0.8], [0.2] * 3),
            _row([0.1, 0.0, -0.1], [0.05] * 3, headline=False)]  # fmt: skip
    family = pool_rows(rows)
    assert family["rows"] == 2 and family["per_row_confidence"] == pytest.approx(0.975)
    want = P.random_effects([2.0, 2.1, 1.9, 2.05, 1.95], [0.1] * 5, 0.975).interval
    p = rows[0]["pooled"]
    assert (p["effect"], p["low"], p["high"], p["df"]) == (want.estimate, want.low, want.high, 4)
    assert rows[0]["verdict"] == C.margin_verdict(want, 0.5) == "supported"
    assert rows[0]["teacher_verdicts"] == "supported"
    other = P.random_effects([0.1, 0.0, -0.1], [0.05] * 3, 0.95).interval
    assert rows[2]["pooled"]["low"] == other.low  # not in the family: 95 % on its own
    assert p["supported_needs"] == pytest.approx(P.supported_needs(want, 0.5, 0.975))
    assert p["negligible_reachable"] is P.negligible_reachable(want, 0.5)


def test_one_disagreeing_teacher_makes_the_headline_inconclusive():
    row = _row([2.0, 2.1, 1.9, 2.05, -3.0], [0.1] * 5)
    got = pool_row(row, 0.95)
    assert got["tau2"] > 1 and got["low"] < 0.5 < got["high"]
    assert got["verdict"] == C.INCONCLUSIVE


def test_fewer_than_three_teachers_give_no_headline_and_a_row_not_run_stays_not_run():
    two = pool_row(_row([2.0, 2.1], [0.1, 0.1]), 0.95)
    assert two["verdict"] == f"{NO_HEADLINE} (K = 2 < 3)" and two["effect"] is None
    cells = _row([2.0, 2.1, 1.9], [0.1] * 3)
    cells["teachers"]["1"]["verdict"] = C.NOT_RUN
    assert pool_row(cells, 0.95)["verdict"] == C.NOT_RUN


def test_the_free_row_is_pooled_as_non_inferiority():
    row = _row([-0.1, 0.0, 0.1, -0.05], [0.05] * 4, rule="non-inferiority", margin=0.5)
    got = pool_row(row, 0.95)
    assert got["low"] > -0.5 and got["verdict"] == "non-inferior"


def test_the_accuracy_bar_is_a_sensitivity_split_not_a_filter():
    """Pooled without the teacher below the bar (seed "4", the one that disagrees), the
    headline row turns supported; the rows given keep every teacher and their verdicts, and
    the non-headline row is not in the split."""
    rows = [
        _row([2.0, 2.1, 1.9, 2.05, -3.0], [0.1] * 5),
        _row([0.1] * 3, [0.05] * 3, headline=False),
    ]
    for i, r in enumerate(rows):
        r["id"] = f"row{i}"
    pool_rows(rows)
    before = [dict(r["pooled"]) for r in rows]
    split = sensitivity_split(rows, kept=["0", "1", "2", "3"])
    assert [r["pooled"] for r in rows] == before and len(rows[0]["teachers"]) == 5
    assert rows[0]["verdict"] == "inconclusive"
    (got,) = split
    assert got["id"] == "row0"
    want = P.random_effects([2.0, 2.1, 1.9, 2.05], [0.1] * 4, P.bonferroni(0.95, 1)).interval
    assert (got["k"], got["low"], got["high"]) == (4, want.low, want.high)
    assert got["verdict"] == "supported"
    assert sensitivity_split(rows, kept=["0", "1"])[0]["verdict"].startswith(NO_HEADLINE)
