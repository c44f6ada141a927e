"""Pooling over teachers, SPEC.md 10 (pooling.py), on planted data whose answer is known: the
random-effects meta-analysis held to a hand computation (textbook formulas as plain loops) and
to statsmodels' combine_effects, the Bonferroni confidence, power both ways, and the exact
sign-flip p held to a brute-force loop over every sign pattern."""

from __future__ import annotations

import itertools
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects

from winft_lightning.core import claims as C
from winft_lightning.core import pooling as P


def hand_pool(y: list[float], s: list[float], confidence: float = 0.95, modified: bool = True):
    """DerSimonian-Laird + (modified) HKSJ written out term by term: (mu, low, high, se, tau2, q)."""
    k = len(y)
    w = [1 / si**2 for si in s]
    sw = sum(w)
    y_fixed = sum(wi * yi for wi, yi in zip(w, y, strict=True)) / sw
    q = sum(wi * (yi - y_fixed) ** 2 for wi, yi in zip(w, y, strict=True))
    c = sw - sum(wi**2 for wi in w) / sw
    tau2 = max(0.0, (q - (k - 1)) / c)
    w_re = [1 / (si**2 + tau2) for si in s]
    sw_re = sum(w_re)
    mu = sum(wi * yi for wi, yi in zip(w_re, y, strict=True)) / sw_re
    q_hk = sum(wi * (yi - mu) ** 2 for wi, yi in zip(w_re, y, strict=True)) / (k - 1)
    se = math.sqrt((max(1.0, q_hk) if modified else q_hk) / sw_re)
    half = stats.t.ppf((1 + confidence) / 2, k - 1) * se
    return mu, mu - half, mu + half, se, tau2, q


def library_row(y: list[float], s: list[float], row: str, confidence: float = 0.95):
    """statsmodels' (eff, ci_low, ci_upp, sd_eff) of a summary row, and its results."""
    with warnings.catch_warnings():  # its per-sample rows, and its rows of a negative tau^2
        warnings.simplefilter("ignore")
        res = combine_effects(np.asarray(y), np.asarray(s) ** 2, method_re="dl", use_t=True)
        frame = res.summary_frame(alpha=1 - confidence)
    return tuple(float(frame.loc[row, c]) for c in ("eff", "ci_low", "ci_upp", "sd_eff")), res


def assert_pooled_is(pooled: P.Pooled, mu, low, high, se, tol=1e-10):
    got = pooled.interval
    assert (got.estimate, got.low, got.high, got.se) == pytest.approx((mu, low, high, se), abs=tol)


# ---- random effects: the acceptance cases ----


def test_one_disagreeing_teacher_gives_a_wide_pooled_interval_and_inconclusive():
    margin = 0.5
    agree, s = [2.0, 2.1, 1.9, 2.05], [0.2, 0.25, 0.2, 0.3]
    for yi, si in zip(agree, s, strict=True):  # each agreeing teacher alone is supported
        alone = C.Interval(yi, yi - 1.96 * si, yi + 1.96 * si, 1, "z", si)
        assert C.margin_verdict(alone, margin) == C.SUPPORTED
    four = P.random_effects(agree, s)
    assert C.margin_verdict(four.interval, margin) == C.SUPPORTED
    assert four.tau2 == 0.0 and four.i2 == 0.0

    y, s5 = [*agree, -3.0], [*s, 0.2]
    pooled = P.random_effects(y, s5)
    assert C.margin_verdict(pooled.interval, margin) == C.INCONCLUSIVE
    width = pooled.interval.high - pooled.interval.low
    assert width > 8 * (four.interval.high - four.interval.low)
    assert pooled.tau2 > 1.0 and pooled.i2 > 0.9 and pooled.k == 5
    assert max(pooled.weights) - min(pooled.weights) < 0.05  # tau^2 evens the weights out

    mu, low, high, se, tau2, q = hand_pool(y, s5)
    assert_pooled_is(pooled, mu, low, high, se)
    assert (pooled.tau2, pooled.q) == pytest.approx((tau2, q), abs=1e-10)
    # DL's tau^2 leaves the plain HKSJ scale below 1 here: the floor holds, and the answer is
    # the library's random-effect row on t (scale 1); the plain HKSJ is its "wls" row
    assert pooled.hk_scale < 1
    (l_mu, l_low, l_high, l_se), res = library_row(y, s5, "random effect")
    assert_pooled_is(pooled, l_mu, l_low, l_high, l_se)
    plain = P.random_effects(y, s5, modified=False)
    assert_pooled_is(plain, *library_row(y, s5, "random effect wls")[0])
    assert C.margin_verdict(plain.interval, margin) == C.INCONCLUSIVE
    assert (pooled.tau2, pooled.q, pooled.i2) == pytest.approx((res.tau2, res.q, res.i2), abs=1e-10)
    assert pooled.weights == pytest.approx(list(res.weights_rel_re), abs=1e-12)


@pytest.mark.parametrize("k", [3, 5, 8])
def test_equal_teachers_give_the_teacher_estimate_back_with_tau2_zero(k):
    y, s = 1.3, 0.4
    pooled = P.random_effects([y] * k, [s] * k)
    assert pooled.tau2 == 0.0 and pooled.i2 == 0.0 and pooled.q == pytest.approx(0, abs=1e-20)
    assert pooled.weights == pytest.approx([1 / k] * k, abs=1e-15)
    half = stats.t.ppf(0.975, k - 1) * s / math.sqrt(k)  # our reading: the fixed-effect SE, on t
    assert_pooled_is(pooled, y, y - half, y + half, s / math.sqrt(k), tol=1e-12)
    assert pooled.interval.df == k - 1 and pooled.interval.n == k
    assert f"over {k} teachers" in pooled.interval.method
    assert_pooled_is(pooled, *hand_pool([y] * k, [s] * k)[:4])
    # statsmodels' "dl" does not truncate tau^2 at 0 (here it is negative), so the library's
    # fixed-effect row on t is the reference: with tau^2 = 0 random effects are fixed effects
    (l_mu, l_low, l_high, l_se), res = library_row([y] * k, [s] * k, "fixed effect")
    assert res.tau2 < 0
    assert_pooled_is(pooled, l_mu, l_low, l_high, l_se)
    # the plain HKSJ collapses to a point: why the floor at 1
    plain = P.random_effects([y] * k, [s] * k, modified=False)
    assert plain.interval.high - plain.interval.low == pytest.approx(0, abs=1e-12)
    assert pooled.hk_scale == plain.hk_scale == pytest.approx(0, abs=1e-20)


def planted_meta(seed: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    k = int(rng.choice([3, 5, 8]))
    s = rng.uniform(0.2, 1.0, k)
    spread = rng.choice([0.0, 0.3, 1.5])  # from homogeneous to clearly heterogeneous
    return (rng.normal(1.0, spread, k) + rng.normal(0, s)).tolist(), s.tolist()


def test_random_effects_against_hand_and_statsmodels_in_every_regime():
    regimes = set()
    for seed in range(40):
        y, s = planted_meta(seed)
        k = len(y)
        for modified in (True, False):
            pooled = P.random_effects(y, s, 0.9, modified=modified)
            mu, low, high, se, tau2, q = hand_pool(y, s, 0.9, modified)
            assert_pooled_is(pooled, mu, low, high, se)
            assert (pooled.tau2, pooled.q) == pytest.approx((tau2, q), abs=1e-10)
        # the library: with Q < K-1 (tau^2 = 0, where statsmodels leaves it negative) the
        # fixed-effect rows; else the random-effect rows; the modified interval is the wider
        # of the scale-1 and the HKSJ row
        fe = pooled.q < k - 1
        rows = (
            ("fixed effect", "fixed effect wls") if fe else ("random effect", "random effect wls")
        )
        scale1, res = library_row(y, s, rows[0], 0.9)
        hksj, _ = library_row(y, s, rows[1], 0.9)
        assert_pooled_is(pooled, *hksj)  # the last loop pass: modified=False
        modified = P.random_effects(y, s, 0.9)
        assert_pooled_is(modified, *max(scale1, hksj, key=lambda r: r[3]))
        assert modified.q == pytest.approx(res.q, abs=1e-10)
        assert modified.tau2 == pytest.approx(max(0.0, res.tau2), abs=1e-10)
        assert modified.i2 == pytest.approx(max(0.0, res.i2), abs=1e-10)
        regimes.add((fe, modified.hk_scale > 1))
    # all three: homogeneous (floor active), heterogeneous with q_hk above and below 1
    assert regimes == {(True, False), (False, True), (False, False)}


def test_random_effects_refuses_what_it_cannot_pool():
    with pytest.raises(ValueError, match="K >= 2"):
        P.random_effects([1.0], [0.1])
    with pytest.raises(ValueError, match="must be > 0"):
        P.random_effects([1.0, 2.0, 3.0], [0.1, 0.0, 0.1])
    with pytest.raises(ValueError, match="must be > 0"):
        P.random_effects([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])  # all SEs 0: refused too
    with pytest.raises(ValueError, match="must be > 0"):
        P.random_effects([1.0, 2.0], [0.1, -0.1])
    with pytest.raises(ValueError, match="ses must be finite"):
        P.random_effects([1.0, 2.0], [0.1, math.inf])
    with pytest.raises(ValueError, match="estimates must be finite"):
        P.random_effects([1.0, math.nan], [0.1, 0.1])
    with pytest.raises(ValueError, match="3 estimates but 2"):
        P.random_effects([1.0, 2.0, 3.0], [0.1, 0.1])
    with pytest.raises(ValueError, match="1-D"):
        P.random_effects([[1.0, 2.0]], [[0.1, 0.1]])
    with pytest.raises(ValueError, match="confidence"):
        P.random_effects([1.0, 2.0], [0.1, 0.1], confidence=95)


def test_pooled_or_none_gives_no_headline_below_three_teachers():
    assert P.MIN_TEACHERS == 3
    assert P.pooled_or_none([1.0, 2.0], [0.1, 0.2]) is None
    y, s = torch.tensor([1.0, 2.0, 1.5]), torch.tensor([0.1, 0.2, 0.3])  # tensors are fine
    pooled = P.pooled_or_none(y, s, 0.9)
    assert pooled == P.random_effects(y.tolist(), s.tolist(), 0.9)
    assert pooled.k == 3


# ---- a family of claims ----


def test_bonferroni_per_row_confidence_covers_the_family():
    assert P.bonferroni(0.95, 1) == pytest.approx(0.95, abs=1e-15)
    assert P.bonferroni(0.95, 5) == pytest.approx(0.99, abs=1e-15)
    assert P.bonferroni(0.9, np.int64(4)) == pytest.approx(0.975, abs=1e-15)
    for m in range(1, 30):  # the union bound: m independent rows hold together >= confidence
        per_row = P.bonferroni(0.95, m)
        assert per_row**m >= 0.95 and 1 - m * (1 - per_row) == pytest.approx(0.95, abs=1e-12)
    y, s = [1.0, 1.4, 0.8], [0.2, 0.3, 0.25]
    wide = P.random_effects(y, s, P.bonferroni(0.95, 4)).interval
    narrow = P.random_effects(y, s, 0.95).interval
    assert wide.low < narrow.low and wide.high > narrow.high
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="m >= 1"):
            P.bonferroni(0.95, bad)
    with pytest.raises(ValueError, match="confidence"):
        P.bonferroni(1.0, 3)


# ---- power both ways ----


def test_supported_needs_is_the_effect_supported_finds_with_80_percent_power():
    margin = 0.5
    ci = C.t_interval([0.9, 1.3, 0.7, 1.1, 1.0])  # a t interval over 5 seeds, df 4
    needs = P.supported_needs(ci, margin)
    assert needs == pytest.approx(margin + C.mde_multiplier(4) * ci.se, abs=1e-12)
    # at that true effect, P(low > m) = P(T > t_crit), T noncentral t with ncp (needs - m)/SE
    crit = stats.t.ppf(0.975, 4)
    assert stats.nct.sf(crit, 4, (needs - margin) / ci.se) == pytest.approx(0.8, abs=1e-6)
    pooled = P.random_effects([1.0, 1.2, 0.9], [0.1, 0.1, 0.1]).interval
    assert P.supported_needs(pooled, margin) == pytest.approx(
        margin + C.mde_multiplier(2) * pooled.se, abs=1e-12
    )
    # a Bonferroni row: its own confidence, a larger multiplier
    per_row = P.bonferroni(0.95, 5)
    strict = P.supported_needs(ci, margin, per_row)
    assert strict == pytest.approx(margin + C.mde_multiplier(4, confidence=per_row) * ci.se)
    assert strict > needs


def test_supported_needs_of_a_large_sample_interval():
    boot = C.Interval(1.0, 0.8, 1.2, 500, "bootstrap", se=0.1)
    assert P.supported_needs(boot, 0.3) == pytest.approx(0.3 + 2.8 * 0.1, abs=1e-15)
    z = stats.norm.ppf(0.995) + stats.norm.ppf(0.8)
    assert P.supported_needs(boot, 0.3, 0.99) == pytest.approx(0.3 + z * 0.1, abs=1e-12)
    with pytest.raises(ValueError, match="standard error"):
        P.supported_needs(C.Interval(1.0, 0.8, 1.2, 500, "no se"), 0.3)
    with pytest.raises(ValueError, match="margin"):
        P.supported_needs(boot, 0.0)


def test_negligible_reachable_iff_a_centred_interval_of_that_width_is_negligible():
    margin = 0.5
    for half, reachable in ((0.4, True), (0.5, False), (0.56, False), (0.92, False)):
        ci = C.Interval(0.3, 0.3 - half, 0.3 + half, 10, "planted", half / 2)
        assert P.negligible_reachable(ci, margin) is reachable
        centred = C.Interval(0.0, -half, half, 10, "planted", half / 2)
        assert (C.margin_verdict(centred, margin) == C.NEGLIGIBLE) is reachable
    with pytest.raises(ValueError, match="not an interval"):
        P.negligible_reachable(C.Interval(0.0, 1.0, -1.0, 3, "flipped"), margin)


# ---- the exact sign-flip p ----


def brute_sign_flip_p(deltas: list[float]) -> float:
    """Every sign pattern in exact rational arithmetic, the observed one included."""
    exact = [Fraction(d) for d in deltas]
    observed = abs(sum(exact))
    patterns = list(itertools.product((1, -1), repeat=len(exact)))
    hits = sum(abs(sum(sg * d for sg, d in zip(signs, exact, strict=True))) >= observed
               for signs in patterns)  # fmt: skip
    return hits / len(patterns)


@pytest.mark.parametrize(
    "deltas, expected",
    [
        ([1.0, 2.0, 3.0], 2 / 8),  # all positive: only the observed pattern and its mirror
        ([0.5] * 5, 2 / 32),  # n = 5 can never reach 0.05
        ([0.5] * 6, 2 / 64),
        ([1.0, -1.0, 1.0, -1.0], 1.0),  # mean 0: every pattern is as extreme
        ([1.0, 1.0, -1.0, 2.0], 8 / 16),  # 3 other patterns tie with the observed |sum| 3
        ([0.1, 0.2, 0.3], 2 / 8),
    ],
)
def test_sign_flip_p_on_planted_deltas(deltas, expected):
    assert P.sign_flip_p(deltas) == pytest.approx(expected, abs=1e-15)
    assert brute_sign_flip_p(deltas) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_sign_flip_p_matches_the_brute_force_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 13))
    deltas = (rng.normal(0.4, 1.0, n)).tolist()
    if seed % 2:  # half-integers: many exact ties
        deltas = [round(2 * d) / 2 for d in deltas]
    assert P.sign_flip_p(deltas) == brute_sign_flip_p(deltas)
    assert P.sign_flip_p(torch.tensor(deltas, dtype=torch.float64)) == brute_sign_flip_p(deltas)


def test_sign_flip_p_at_twenty_seeds_and_its_refusals():
    deltas = np.arange(1, 21, dtype=np.float64)  # all positive: the two extreme patterns
    assert P.sign_flip_p(deltas) == 2 / 2**20
    with pytest.raises(ValueError, match="2 <= n <= 20"):
        P.sign_flip_p(np.ones(21))
    with pytest.raises(ValueError, match="2 <= n <= 20"):
        P.sign_flip_p([1.0])
    with pytest.raises(ValueError, match="finite"):
        P.sign_flip_p([1.0, math.nan, 2.0])
