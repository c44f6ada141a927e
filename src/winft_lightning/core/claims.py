"""Claims tests of SPEC.md 8: intervals, verdicts, the per-image effects of C1-C3. Pure: no
Lightning, no I/O. Shapes as in :mod:`.interactions` (B images, grid ``(h, w)``, N patches
row-major, windows ``[B, N, 4]`` long inclusive ``(x_l, y_t, x_r, y_b)``). Random draws take a
``torch.Generator`` (on the tensors' device) or an integer seed, never global state."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy import optimize, stats
from torch import Tensor, nn

from .interactions import Grid, _check_grid

# fmt: off
__all__ = [
    "CONTRADICTED",
    "INCONCLUSIVE",
    "INFERIOR",
    "MDE_FACTOR",
    "MIN_RESAMPLES",
    "MIXED",
    "NEGLIGIBLE",
    "NON_INFERIOR",
    "NOT_RUN",
    "SUPPORTED",
    "VERDICT_RULES",
    "FieldGap",
    "Interval",
    "centred_windows_like",
    "common_verdict",
    "field_size_gap",
    "grid_distances",
    "margin_verdict",
    "mde",
    "noninferiority_verdict",
    "object_patch_mask",
    "paired_bootstrap_ci",
    "per_image_correct",
    "place_windows_like",
    "random_hits",
    "random_windows_like",
    "t_interval",
]
# fmt: on

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
MIN_RESAMPLES = 2000  # SPEC 8: ">= 2,000 resamples"
Sample = Tensor | np.ndarray | list  # one value per image (or seed)


# ---- intervals and verdicts ----
@dataclass(frozen=True)
class Interval:
    """An effect's point ``estimate`` (the mean over the n units) and its ``[low, high]``
    confidence interval; ``method`` says how it was computed."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    se: float = float("nan")  # standard error of the estimate: the MDE's unit (SPEC 9)
    df: int | None = None  # a t interval's degrees of freedom (None: a large-sample interval)


def _sample(x: Sample) -> np.ndarray:
    """A 1-D float64 array of per-unit values (bool correctness becomes 0/1)."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"need 1-D values, at least 2 (images or seeds), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("values must be finite (drop the images without an effect first)")
    return arr


def paired_bootstrap_ci(
    a: Sample,
    b: Sample | None = None,
    *,
    confidence: float = 0.95,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap CI of the mean per-image effect (SPEC 8), resampling images.

    ``a`` alone: the per-image effects ``[B]`` (e.g. C1's ratios, C1b's gaps). ``a`` and ``b``:
    two per-image measurements of the same images (e.g. C2/C3 correctness ``[B]`` bool); the
    effect is ``a - b`` per image, so each resample keeps an image's pair together, and the
    mean of the differences is the difference of the accuracies. ``scipy.stats.bootstrap``
    with ``method="percentile"``, ``resamples`` >= 2000, seeded by ``seed``."""
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"SPEC 8 asks for >= {MIN_RESAMPLES} resamples, got {resamples}")
    effects = _sample(a)
    if b is not None:
        other = _sample(b)
        if other.shape != effects.shape:
            raise ValueError(f"paired samples differ in size: {effects.size} vs {other.size}")
        effects = effects - other
    batch = max(1, (1 << 22) // effects.size)  # ~32 MiB of resampled values at a time
    opts = dict(confidence_level=confidence, method="percentile", vectorized=True, batch=batch)
    rng = np.random.default_rng(seed)
    boot = stats.bootstrap((effects,), np.mean, n_resamples=resamples, rng=rng, **opts)
    ci = boot.confidence_interval
    method = f"percentile bootstrap over images ({resamples} resamples, seed {seed})"
    se = float(boot.standard_error)
    return Interval(float(effects.mean()), float(ci.low), float(ci.high), effects.size, method, se)


def t_interval(deltas: Sample, confidence: float = 0.95) -> Interval:
    """Student t interval of the mean of paired per-seed deltas (SPEC 8, trained comparisons):
    ``mean ± t_{(1+confidence)/2, n-1} * s / sqrt(n)``, s the sample sd (ddof 1)."""
    x, n = _sample(deltas), len(deltas)
    se = x.std(ddof=1) / math.sqrt(n)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * se
    mean = float(x.mean())
    return Interval(
        mean, mean - half, mean + half, n, f"t interval over {n} seeds", float(se), n - 1
    )


NEGLIGIBLE, MIXED = "negligible", "mixed"
MDE_FACTOR = 2.8  # z_0.975 + z_0.80: the effect a two-sided 5 % test detects with 80 % power


def _check_rule(interval: Interval, margin: float) -> None:
    if not margin > 0:
        raise ValueError(f"the margin must be > 0, got {margin}")
    if not interval.low <= interval.high:  # also catches NaN
        raise ValueError(f"not an interval: [{interval.low}, {interval.high}]")


def margin_verdict(interval: Interval, margin: float) -> str:
    """SPEC 9's rule for an effect signed so that the claim predicts > 0, with the smallest
    effect that matters ``margin`` (m > 0), applied in this order: "negligible" when
    -m < low and high < m; "contradicted" when high < 0; "supported" when low > m;
    "inconclusive" otherwise."""
    _check_rule(interval, margin)
    if -margin < interval.low and interval.high < margin:
        return NEGLIGIBLE
    if interval.high < 0:
        return CONTRADICTED
    if interval.low > margin:
        return SUPPORTED
    return INCONCLUSIVE


NON_INFERIOR, INFERIOR = "non-inferior", "inferior"
NOT_RUN = "not run"  # a row whose arms were not measured: never a verdict


def noninferiority_verdict(interval: Interval, margin: float) -> str:
    """SPEC 10's rule for a claim of *no loss* ("dropping is free"), the effect signed so that
    a loss is < 0, with the largest loss that does not matter ``margin`` (m > 0):
    "non-inferior" when low > -m; "inferior" when high < -m; "inconclusive" otherwise."""
    _check_rule(interval, margin)
    if interval.low > -margin:
        return NON_INFERIOR
    if interval.high < -margin:
        return INFERIOR
    return INCONCLUSIVE


# a row's rule name -> the function that gives its verdict from an interval and the margin
VERDICT_RULES = {"margin": margin_verdict, "non-inferiority": noninferiority_verdict}


def mde_multiplier(df: int | None, power: float = 0.8, confidence: float = 0.95) -> float:
    """The MDE in standard errors: 2.8 (= z_0.975 + z_0.80) for a large-sample interval; for a
    t interval with ``df`` degrees of freedom the exact value from the noncentral t, the
    effect whose two-sided test at ``1 - confidence`` rejects with probability ``power``."""
    if df is None:
        return MDE_FACTOR
    crit = stats.t.ppf(0.5 + confidence / 2, df)

    def shortfall(ncp: float) -> float:
        far_tail = np.nan_to_num(stats.nct.cdf(-crit, df, ncp))  # ~0, NaN for a large ncp
        return stats.nct.sf(crit, df, ncp) + far_tail - power

    return float(optimize.brentq(shortfall, 0.0, 10.0 * crit + 10.0))


def mde(interval: Interval) -> float:
    """Minimum detectable effect at 80 % power (two-sided 5 %): SPEC 9's 2.8 x the interval's
    standard error; for a t interval over few seeds the exact noncentral-t multiplier, which
    tends to 2.8 as the seeds grow (:func:`mde_multiplier`)."""
    return mde_multiplier(interval.df) * interval.se


def common_verdict(verdicts: list[str]) -> str:
    """The claim's verdict over K teachers: the common one when all agree, else "mixed" with
    the count of each, e.g. "mixed (2 supported, 1 inconclusive)"."""
    if not verdicts:
        raise ValueError("no verdicts to combine")
    if len(set(verdicts)) == 1:
        return verdicts[0]
    counts = sorted(((verdicts.count(v), v) for v in set(verdicts)), key=lambda c: (-c[0], c[1]))
    return f"{MIXED} ({', '.join(f'{k} {v}' for k, v in counts)})"


# ---- C1: locality of U ----
def _patch_xy(grid: Grid, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    p = torch.arange(grid[0] * grid[1], device=device)
    return p % grid[1], p // grid[1]


def grid_distances(grid: Grid, device: torch.device | None = None) -> Tensor:
    """Euclidean distance between patch centres in grid units: ``[N, N]`` float64."""
    x, y = (c.to(torch.float64) for c in _patch_xy(grid, device))
    return ((x[:, None] - x[None]) ** 2 + (y[:, None] - y[None]) ** 2).sqrt()


def random_hits(counts: Tensor, generator: torch.Generator) -> Tensor:
    """``[B, N, N]`` bool: per image b, ``counts[b, p]`` (``[B, N]`` in 0..N-1) entries of row p
    minus p, drawn uniformly without replacement (counts on the generator's device)."""
    b, n = counts.shape
    if counts.numel() and not 0 <= int(counts.min()) <= int(counts.max()) <= n - 1:
        raise ValueError(f"counts must lie in 0..{n - 1} (row p minus p)")
    keys = torch.rand(b, n, n, generator=generator, device=counts.device, dtype=torch.float64)
    keys.diagonal(dim1=1, dim2=2).fill_(2.0)  # p sorts last, so it is never drawn
    rank = keys.argsort(dim=-1).argsort(dim=-1)  # a uniform random order of row p minus p
    return rank < counts.unsqueeze(-1)


def object_patch_mask(images01: Tensor, grid: Grid, threshold: float = 0.1) -> Tensor:
    """``[B, N]`` bool, SPEC 8 C1b: a patch is *object* when the mean of its analyzed-view pixels
    (all channels; ``images01`` ``[B, C, H, W]`` in 0..1, before normalisation) > threshold."""
    if not images01.is_floating_point():
        raise TypeError(f"images must be floating point in 0..1, got {images01.dtype}")
    b, c, height, width = images01.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"a {height}x{width} image does not split into a {h}x{w} grid")
    cells = images01.to(torch.float64).reshape(b, c, h, height // h, w, width // w)
    return (cells.mean(dim=(1, 3, 5)) > threshold).reshape(b, h * w)


class FieldGap(NamedTuple):
    """``gap`` ``[B']``: per kept image, mean |S_p| over object patches minus the mean over
    background patches; ``skipped``: images left out because either set was empty."""

    gap: Tensor
    skipped: int


def field_size_gap(field_sizes: Tensor, object_mask: Tensor) -> FieldGap:
    """C1b's per-image effect. field_sizes ``[B, h, w]`` (``interactions.field_size``) or
    ``[B, N]``; object_mask ``[B, N]`` bool (:func:`object_patch_mask`)."""
    sizes = field_sizes.flatten(1).to(torch.float64)
    obj = object_mask.flatten(1).to(device=sizes.device, dtype=torch.bool)
    if sizes.shape != obj.shape:
        raise ValueError(f"field sizes {tuple(sizes.shape)} vs object mask {tuple(obj.shape)}")
    n_obj, n_bg = obj.sum(dim=1), (~obj).sum(dim=1)
    mean_obj = (sizes * obj).sum(dim=1) / n_obj
    mean_bg = (sizes * ~obj).sum(dim=1) / n_bg
    kept = (n_obj > 0) & (n_bg > 0)
    return FieldGap((mean_obj - mean_bg)[kept], int((~kept).sum()))


# ---- C2: control windows of the same size ----
def _window_sizes(windows: Tensor, grid: Grid) -> tuple[Tensor, Tensor]:
    """Widths and heights ``[B, N]`` of valid windows (1..w by 1..h)."""
    _check_grid(windows.shape[1], grid)
    win = windows.long()
    wd, ht = win[..., 2] - win[..., 0] + 1, win[..., 3] - win[..., 1] + 1
    if not ((wd >= 1) & (ht >= 1) & (wd <= grid[1]) & (ht <= grid[0])).all():
        raise ValueError(f"windows must have 1 <= width <= {grid[1]} and 1 <= height <= {grid[0]}")
    return wd, ht


def _boxes(x_l: Tensor, y_t: Tensor, wd: Tensor, ht: Tensor) -> Tensor:
    return torch.stack((x_l, y_t, x_l + wd - 1, y_t + ht - 1), dim=-1)


def _uniform_start(pos: Tensor, size: Tensor, length: int, draw: Tensor) -> Tensor:
    """A start, uniform among those whose box of ``size`` holds ``pos`` within 0..length-1,
    chosen by ``draw`` (uniform in [0, 1), float64, ``size``'s shape)."""
    lo = (pos - size + 1).clamp_min(0)
    hi = torch.minimum(pos.expand_as(size), length - size)  # inclusive; lo <= hi as size <= length
    return torch.minimum(lo + (draw * (hi - lo + 1)).long(), hi)


def place_windows_like(windows: Tensor, grid: Grid, x_draw: Tensor, y_draw: Tensor) -> Tensor:
    """:func:`random_windows_like` given its uniform draws ``[B, N]`` (float64 in [0, 1)) for
    the x and the y start: a batch whose images draw from different generators is placed at
    once."""
    wd, ht = _window_sizes(windows, grid)
    x, y = _patch_xy(grid, windows.device)
    x_l = _uniform_start(x, wd, grid[1], x_draw)
    y_t = _uniform_start(y, ht, grid[0], y_draw)
    return _boxes(x_l, y_t, wd, ht)


def random_windows_like(windows: Tensor, grid: Grid, generator: torch.Generator) -> Tensor:
    """C2's random control ``[B, N, 4]``: the same w x h as p's window, containing p, uniform
    among the positions that fit (x and y starts independent: those positions are a product).
    Draws the x starts' uniforms, then the y starts', from ``generator``."""
    kw = dict(generator=generator, device=windows.device, dtype=torch.float64)
    x_draw = torch.rand(windows.shape[:2], **kw)
    y_draw = torch.rand(windows.shape[:2], **kw)
    return place_windows_like(windows, grid, x_draw, y_draw)


def centred_windows_like(windows: Tensor, grid: Grid) -> Tensor:
    """C2's centred control ``[B, N, 4]``: the same w x h as p's window, centred on p (an even
    side puts p in the later middle cell: start = x_p - w // 2), then shifted to fit."""
    wd, ht = _window_sizes(windows, grid)
    x, y = _patch_xy(grid, windows.device)
    x_l = (x - wd // 2).clamp_min(0).minimum(grid[1] - wd)
    y_t = (y - ht // 2).clamp_min(0).minimum(grid[0] - ht)
    return _boxes(x_l, y_t, wd, ht)


# ---- C2 / C3: per-image correctness of the network ----
def per_image_correct(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    windows: Tensor | None = None,
    keep: Tensor | None = None,
) -> Tensor:
    """Top-1 correctness ``[B]`` bool (CPU) of ``net`` (from ``build_vit``) on ``images``
    ``[B, 3, H, W]``: ``net(x, windows=..., keep=...)`` (only the given ones) in eval mode under
    ``torch.inference_mode``, training flag restored after; a WinfT output's ``logits``."""
    inputs = {k: v for k, v in (("windows", windows), ("keep", keep)) if v is not None}
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            out = net(images, **inputs)
    finally:
        net.train(was_training)
    logits = getattr(out, "logits", out)
    return (logits.argmax(dim=-1) == labels.to(logits.device)).cpu()
