"""SPEC 10's C3 on planted data whose answer is known: seeded per-image tie-breaks of the
baseline orderings, the non-inferiority rule for "dropping is free", each baseline against
random (a baseline worse than random is uninformative), the headline rows, and rows whose
conditions a pass did not measure ("not run", never a verdict)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from winft_lightning.core import baselines as BL
from winft_lightning.core import claims as C
from winft_lightning.core import claims_table as T

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- ties: a seeded random permutation per image key ----


def _blank_images() -> torch.Tensor:
    """Two identical 12 x 12 images on a 3 x 3 grid: patches 0, 2, 4, 6, 8 blank (std 0),
    the others textured with distinct spreads."""
    img = torch.zeros(1, 3, 12, 12)
    for k, p in enumerate((1, 3, 5, 7)):
        y, x = divmod(p, 3)
        cell = torch.arange(48, dtype=torch.float32).reshape(3, 4, 4) / 48 * (k + 1) / 4
        img[0, :, y * 4 : y * 4 + 4, x * 4 : x * 4 + 4] = cell
    return img.expand(2, 3, 12, 12)


def test_a_tie_among_blank_patches_is_broken_by_the_image_key_not_the_index():
    scores = BL.blank_scores(_blank_images(), (3, 3))
    blank = {0, 2, 4, 6, 8}
    assert {p for p in range(9) if scores[0, p] == 0} == blank

    def order(keys, seed=0):
        ties = BL.tie_permutations([BL.key_seed(k, seed) for k in keys], 9)
        return BL.ascending_order(scores, ties)

    got = order(["img_a", "img_b"])
    for b in range(2):  # the blank patches first (in some order), then by ascending spread
        assert set(got[b, :5].tolist()) == blank and got[b, 5:].tolist() == [1, 3, 5, 7]
    assert got[0, :5].tolist() != got[1, :5].tolist()  # two keys, two tie-breaks
    assert torch.equal(order(["img_a", "img_b"]), got)  # identical on a re-run
    assert torch.equal(order(["img_b", "img_a"]), got.flip(0))  # the key's, not the position's
    assert not torch.equal(order(["img_a", "img_b"], seed=1), got)  # the pass's seed too
    # without ties the order is SPEC 9's (and DIP's own, SPEC 3): by patch index
    assert BL.ascending_order(scores)[0, :5].tolist() == [0, 2, 4, 6, 8]


def test_tie_permutations_are_uniform_and_checked():
    perms = BL.tie_permutations([BL.key_seed(f"k{i}") for i in range(2000)], 5)
    assert torch.equal(perms.sort(dim=1).values, torch.arange(5).expand(2000, 5))
    first = torch.bincount(perms[:, 0], minlength=5).double()
    assert (first - 400).abs().max() < 5 * (2000 * 0.2 * 0.8) ** 0.5
    assert BL.key_seed("k0") != BL.key_seed("k1") and 0 <= BL.key_seed("k0") < 2**63
    with pytest.raises(ValueError, match="ties"):
        BL.ascending_order(torch.zeros(2, 5), perms[:1])


# ---- "dropping is free": non-inferiority ----


@pytest.mark.parametrize(
    ("low", "high", "want"),
    [
        (-0.004, 0.002, "non-inferior"),  # the loss, if any, is within the margin
        (0.001, 0.02, "non-inferior"),  # a gain is non-inferior too
        (-0.03, -0.006, "inferior"),  # the whole interval is a loss beyond m
        (-0.02, 0.01, "inconclusive"),  # straddles -m
        (-0.005, 0.001, "inconclusive"),  # low == -m: not > -m
        (-0.02, -0.005, "inconclusive"),  # high == -m: not < -m
    ],
)
def test_noninferiority_rule_on_planted_intervals(low, high, want):
    ci = C.Interval((low + high) / 2, low, high, 1000, "x", (high - low) / 4)
    assert C.noninferiority_verdict(ci, 0.005) == want


def test_noninferiority_rule_refuses_bad_input():
    with pytest.raises(ValueError, match="margin"):
        C.noninferiority_verdict(C.Interval(0.0, -0.001, 0.001, 10, "x"), 0.0)
    with pytest.raises(ValueError, match="not an interval"):
        C.noninferiority_verdict(C.Interval(0.0, 0.001, -0.001, 10, "x"), 0.005)


# ---- the C3 rows of the claims table on planted columns ----

N_IMAGES = 400
RATES = {"variance:lowest": 0.9, "variance:highest": 0.1, "random:lowest": 0.7,
         "random:highest": 0.7, "blank": 0.3, "rollout": 0.95, "cls": 0.7}  # fmt: skip


def _correct(rate: float) -> np.ndarray:
    return np.arange(N_IMAGES) < round(rate * N_IMAGES)


def _columns(betas: list[float]) -> dict[str, np.ndarray]:
    """One teacher's columns: every ordering's correctness at a fixed rate per beta (the same
    images correct at every rate, so a difference is exact), the unrestricted teacher at 0.9."""
    rng = np.random.default_rng(0)
    cols = {"key": np.asarray([f"k{i}" for i in range(N_IMAGES)]), "correct:full": _correct(0.9),
            "locality": rng.normal(0.3, 0.1, N_IMAGES), "gap": rng.normal(0, 1, N_IMAGES),
            "gap_null": rng.normal(1, 1, N_IMAGES), "kept:0.1": np.full(N_IMAGES, 0.5),
            "kept_null:0.1": np.full(N_IMAGES, 0.8)}  # fmt: skip
    for c in ("awd", "random", "centred"):
        cols[T.column("correct", c, 0.1)] = _correct(0.8)
    for o in T.ORDERINGS:
        for d in ("lowest", "highest"):
            rate = RATES.get(f"{o}:{d}", RATES.get(o))
            for b in betas:
                cols[T.column("correct", o, d, b)] = _correct(rate)
    return cols


def _summary(betas: list[float]) -> dict:
    settings = dict(alphas=[0.1], keep_alphas=[0.1], betas=betas, locality_alpha=0.1)
    records = {0: _columns(betas), 1: _columns(betas)}
    return T.summarise_claims(records, settings, 16)


def test_a_baseline_worse_than_random_is_reported_as_uninformative():
    result = _summary([0.1, 0.2, 0.3, 0.5])
    rows = {r["id"]: r for r in result["claims"]}
    assert rows["C3/baseline/blank"]["teacher_verdicts"] == "contradicted"  # 30 % vs random's 70 %
    assert rows["C3/baseline/rollout"]["teacher_verdicts"] == "supported"
    assert rows["C3/baseline/cls"]["teacher_verdicts"] == "negligible"  # exactly random's
    assert (
        rows["C3/baseline/variance"]["teacher_verdicts"] == "contradicted"
    )  # highest-variance: 10 %
    informative = {k: v["informative"] for k, v in result["c3_baselines"].items()}
    assert informative == {"random": True, "blank": False, "rollout": True, "cls": False,
                           "variance": False}  # fmt: skip
    # DIP beats blank by 60 pp, but blank is uninformative: the row says so
    assert rows["C3/blank"]["teacher_verdicts"] == "supported"
    assert rows["C3/blank"]["baseline_informative"] is False
    assert rows["C3/rollout"]["baseline_informative"] is True
    full = T.claims_markdown(result, headline_only=False)
    blank_line = next(x for x in full.splitlines() if x.startswith("| C3/blank |"))
    assert "does not beat random: uninformative" in blank_line
    headline = T.claims_markdown(result)
    assert ("informative: rollout; uninformative: blank (contradicted), cls (negligible), "
            "highest-variance (contradicted)") in headline  # fmt: skip


def test_headline_c3_rows_are_dip_against_random_and_rollout_with_a_verdict_per_beta():
    result = _summary([0.1, 0.2, 0.3, 0.5])
    c3 = [r for r in result["claims"] if r["claim"] == "C3"]
    assert [r["id"] for r in c3 if r["headline"]] == [
        "C3/rollout", "C3/random", "C3/random/beta=0.2", "C3/rollout/beta=0.2",
        "C3/free/beta=0.2"]  # fmt: skip
    rows = {r["id"]: r for r in c3}
    for base, want in (("random", 0.2), ("rollout", -0.05)):
        for b in T.STEP_BETAS:
            cell = rows[f"C3/{base}/beta={b:g}"]["teachers"]["0"]
            assert cell["effect"] == pytest.approx(want) and cell["verdict"] != C.NOT_RUN
    assert rows["C3/rollout/beta=0.2"]["teacher_verdicts"] == "contradicted"
    # "free": DIP at 90 %, the unrestricted teacher at 90 %: non-inferior by the SPEC 10 rule
    free = rows["C3/free/beta=0.2"]
    assert free["rule"] == "non-inferiority" and free["teacher_verdicts"] == "non-inferior"
    assert [r["id"] for r in c3 if r["id"].startswith("C3/free/")] == [
        f"C3/free/beta={b:g}" for b in (0.1, 0.2, 0.3, 0.5)]  # fmt: skip


def test_a_beta_the_pass_did_not_measure_says_not_run():
    result = _summary([0.25, 0.5])  # no 0.1, 0.2 or 0.3
    rows = {r["id"]: r for r in result["claims"]}
    for base in ("random", "rollout"):
        for b in T.STEP_BETAS:
            row = rows[f"C3/{base}/beta={b:g}"]
            assert row["verdict"] == C.NOT_RUN
            assert all(c["verdict"] == C.NOT_RUN and c["effect"] is None
                       for c in row["teachers"].values())  # fmt: skip
    assert rows["C3/free/beta=0.2"]["verdict"] == C.NOT_RUN
    assert rows["C3/free/beta=0.25"]["teacher_verdicts"] == "non-inferior"  # measured: a verdict
    line = next(x for x in T.claims_markdown(result).splitlines()
                if x.startswith("| C3/random/beta=0.2 |"))  # fmt: skip
    assert line.count("**not run**") == 3 and "inconclusive" not in line and "nan" not in line
