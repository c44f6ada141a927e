"""Pooling over teachers, SPEC.md 10: the teacher is the unit. A random-effects meta-analysis
of K per-teacher effects and their standard errors (DerSimonian-Laird tau^2, the modified
Hartung-Knapp-Sidik-Jonkman interval on t with K - 1 df), the Bonferroni confidence of a
family of headline rows, power stated both ways, and the exact sign-flip p over paired seeds.

Pure: no Lightning, no I/O, no torch. Inputs are 1-D sequences (list, ndarray, CPU tensor) of
one value per teacher (or seed); results are Python floats. ``statsmodels``'
``combine_effects(..., method_re="dl", use_t=True)`` is the reference the tests hold this to.

Our reading of the HKSJ edge cases (for docs/SPEC.md 10a):

- The interval is the *modified* HKSJ (Knapp & Hartung 2003's truncation, recommended for few
  studies by Röver, Knapp & Friede 2015): ``SE = sqrt(max(1, q_hk) / sum w*)``. The plain
  HKSJ scale ``q_hk`` shrinks to 0 as the teachers agree, so K teachers that agree closely
  would give an interval narrower than their own standard errors allow, and K equal
  teachers a zero-width one. The floor at 1 makes the interval never narrower than the
  random-effects interval with known variances, on the same t quantile. It applies
  always, not only at q_hk = 0, so the interval does not jump as teachers come to agree.
  ``Pooled.hk_scale`` keeps the plain q_hk, so a report can say when the floor held.
- K equal teachers (same estimate y, same SE s): Q = 0, tau^2 = 0, every weight 1/K, and
  the pooled interval is ``y ± t_{(1+c)/2, K-1} s / sqrt(K)``: the per-teacher estimate
  back, and the fixed-effect standard error (K agreeing, independent teachers are more
  evidence than one), on t. The per-teacher *interval* itself comes back only at K = 1,
  which is refused; at K = 3 the pooled interval is 1.27x as wide as a per-teacher z
  interval (4.30 / sqrt 3 = 2.48 vs 1.96), at K = 5 0.63x (2.78 / sqrt 5 = 1.24).
- A standard error of 0 (or negative, or not finite) is refused: a teacher with zero
  variance would take all the weight. A per-teacher bootstrap SE is 0 only when every
  per-image effect is equal; the report must say that row is not pooled.
- tau^2 is truncated at 0 (DerSimonian & Laird 1986); statsmodels 0.15 does not truncate
  its "dl" tau^2, so the two agree only when Q >= K - 1 (the tests hold to that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .claims import MDE_FACTOR, Interval, mde_multiplier

__all__ = [
    "MAX_SIGN_FLIP_SEEDS",
    "MIN_TEACHERS",
    "Pooled",
    "bonferroni",
    "negligible_reachable",
    "pooled_or_none",
    "random_effects",
    "sign_flip_p",
    "supported_needs",
]

MIN_TEACHERS = 3  # SPEC 10: "With K < 3 no headline verdict is given"
MAX_SIGN_FLIP_SEEDS = 20  # 2^20 patterns: 8 MiB of sums
METHOD = (
    "random-effects DerSimonian-Laird tau^2, Hartung-Knapp-Sidik-Jonkman t interval{modified} "
    "over {k} teachers"
)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _values(x: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    """A 1-D finite float64 array, or a ValueError naming ``what``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one value per unit), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite, got {arr.tolist()}")
    return arr


@dataclass(frozen=True)
class Pooled:
    """A random-effects pooling of K teachers. ``interval``: the pooled mean, its modified
    HKSJ interval, ``se`` and ``df = K - 1`` (``n = K``). ``tau2``: the DL between-teacher
    variance (>= 0); ``q``: Cochran's Q; ``i2``: Higgins' I^2 = max(0, (Q - (K-1)) / Q) (0
    when Q = 0); ``hk_scale``: the plain HKSJ q_hk before the floor at 1; ``weights``: each
    teacher's relative random-effects weight (sums to 1), in the input order."""

    interval: Interval
    tau2: float
    q: float
    i2: float
    hk_scale: float
    weights: tuple[float, ...]

    @property
    def k(self) -> int:
        return self.interval.n


def random_effects(
    estimates: Sequence[float] | np.ndarray,
    ses: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    *,
    modified: bool = True,
) -> Pooled:
    """Pool K per-teacher effects ``estimates`` ``[K]`` with standard errors ``ses`` ``[K]``.

    DerSimonian-Laird: w_i = 1/s_i^2, fixed mean y_w = sum w y / sum w,
    Q = sum w (y - y_w)^2, tau^2 = max(0, (Q - (K-1)) / (sum w - sum w^2 / sum w)).
    Random effects: w*_i = 1/(s_i^2 + tau^2), mu = sum w* y / sum w*.
    HKSJ: q_hk = sum w* (y - mu)^2 / (K-1); SE = sqrt(max(1, q_hk) / sum w*) (``modified``;
    the plain sqrt(q_hk / sum w*) with ``modified=False``); interval
    mu ± t_{(1+confidence)/2, K-1} SE. See the module docstring for the edge cases.
    Refuses K < 2, SEs that are not finite and > 0, and mismatched lengths (ValueError)."""
    _check_confidence(confidence)
    y, s = _values(estimates, "estimates"), _values(ses, "ses")
    if y.shape != s.shape:
        raise ValueError(f"{y.size} estimates but {s.size} standard errors")
    k = y.size
    if k < 2:
        raise ValueError(f"a random-effects pooling needs K >= 2 teachers, got {k}")
    if not (s > 0).all():
        raise ValueError(
            f"standard errors must be > 0 (a zero-SE teacher takes all the weight): {s.tolist()}"
        )
    w = 1.0 / s**2
    fixed = float(w @ y / w.sum())
    q = float(w @ (y - fixed) ** 2)
    tau2 = max(0.0, (q - (k - 1)) / float(w.sum() - (w**2).sum() / w.sum()))
    w_re = 1.0 / (s**2 + tau2)
    mu = float(w_re @ y / w_re.sum())
    hk_scale = float(w_re @ (y - mu) ** 2) / (k - 1)
    se = math.sqrt((max(1.0, hk_scale) if modified else hk_scale) / float(w_re.sum()))
    half = float(stats.t.ppf(0.5 + confidence / 2, k - 1)) * se
    method = METHOD.format(k=k, modified=" (modified: scale >= 1)" if modified else "")
    interval = Interval(mu, mu - half, mu + half, k, method, se, k - 1)
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    weights = tuple(float(v) for v in w_re / w_re.sum())
    return Pooled(interval, tau2, q, i2, hk_scale, weights)


def pooled_or_none(
    estimates: Sequence[float] | np.ndarray,
    ses: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> Pooled | None:
    """:func:`random_effects` when there are K >= ``MIN_TEACHERS`` (3) teachers, else None:
    SPEC 10 gives no headline verdict with K < 3 (the report prints "K < 3, not pooled")."""
    if len(estimates) < MIN_TEACHERS:
        return None
    return random_effects(estimates, ses, confidence)


def bonferroni(confidence: float, m: int) -> float:
    """The per-row confidence ``1 - (1 - confidence) / m`` that makes ``m`` intervals hold
    simultaneously with probability >= ``confidence`` (SPEC 10: a family of claims)."""
    _check_confidence(confidence)
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
        raise ValueError(f"the family needs m >= 1 rows (an int), got {m!r}")
    return 1.0 - (1.0 - confidence) / int(m)


def _check_margin(interval: Interval, margin: float) -> None:
    if not margin > 0:
        raise ValueError(f"the margin must be > 0, got {margin}")
    if not interval.low <= interval.high:  # also catches NaN
        raise ValueError(f"not an interval: [{interval.low}, {interval.high}]")


def supported_needs(interval: Interval, margin: float, confidence: float = 0.95) -> float:
    """Power stated one way (SPEC 10 (a)): the true effect at which this row's "supported"
    (low > m) comes out with 80 % power, ``m + multiplier * SE``. The multiplier is
    :func:`core.claims.mde_multiplier` at ``confidence`` (the interval's own: pass the
    Bonferroni one for a headline row): for a t interval (``df`` set, e.g. a pooled one)
    the exact noncentral-t value, for a large-sample interval SPEC's 2.8 at 95 % and
    z_{(1+c)/2} + z_{0.80} at any other confidence."""
    _check_margin(interval, margin)
    _check_confidence(confidence)
    if not math.isfinite(interval.se) or interval.se < 0:
        raise ValueError(f"the interval has no usable standard error: {interval.se}")
    if interval.df is None and confidence != 0.95:
        mult = float(stats.norm.ppf(0.5 + confidence / 2) + stats.norm.ppf(0.8))
    elif interval.df is None:
        mult = MDE_FACTOR
    else:
        mult = mde_multiplier(interval.df, confidence=confidence)
    return margin + mult * interval.se


def negligible_reachable(interval: Interval, margin: float) -> bool:
    """Power stated the other way (SPEC 10 (b)): whether "negligible" (-m < low and
    high < m) is reachable at all at this precision, i.e. the half-width (high - low) / 2
    < m. False means even a true effect of exactly 0 cannot be called negligible."""
    _check_margin(interval, margin)
    return (interval.high - interval.low) / 2 < margin


def sign_flip_p(deltas: Sequence[float] | np.ndarray) -> float:
    """The exact two-sided sign-flip (paired permutation) p of paired per-seed ``deltas``
    ``[n]`` (SPEC 10: beside every t interval). Under H0 each delta's sign is a fair coin;
    over all 2^n sign patterns, p = the share whose |mean| >= the observed |mean|, the
    observed pattern counted (so p >= 2 / 2^n: n = 5 seeds can never reach 0.05, n = 6
    reaches 0.03125). Ties are counted within a rounding tolerance. 2 <= n <= 20."""
    x = _values(deltas, "deltas")
    n = x.size
    if not 2 <= n <= MAX_SIGN_FLIP_SEEDS:
        limit = MAX_SIGN_FLIP_SEEDS
        raise ValueError(f"sign-flip p enumerates 2^n patterns: needs 2 <= n <= {limit}, got {n}")
    sums = np.zeros(1)
    for value in x:  # every signed sum: each step doubles the patterns
        sums = np.concatenate((sums + value, sums - value))
    observed = abs(float(x.sum()))
    tol = 8 * n * np.finfo(np.float64).eps * float(np.abs(x).sum())
    return float(np.count_nonzero(np.abs(sums) >= observed - tol)) / sums.size
