"""Figures of the claims tests (SPEC.md 8): the histogram of U' hit distances against random
draws (C1) and the perturbation curves, accuracy vs alpha (C2) and vs beta (C3), with
confidence bands. Drawing only: arrays in, a :class:`matplotlib.figure.Figure` out (the numbers
come from :mod:`winft_lightning.stages.claims`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from winft_lightning.figures.base import DPI, ArrayLike, _np

__all__ = [
    "alpha_curves_figure",
    "beta_curves_figure",
    "locality_histogram_figure",
    "perturbation_figure",
]

Band = tuple[ArrayLike, ArrayLike, ArrayLike]  # estimate, low, high per x (accuracy in 0..1)
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _density(counts: ArrayLike, edges: np.ndarray) -> np.ndarray:
    c = _np(counts).astype(np.float64)
    total = c.sum()
    return c / (total * np.diff(edges)) if total > 0 else c


def locality_histogram_figure(
    edges: ArrayLike,
    hit: ArrayLike,
    random: ArrayLike,
    *,
    alpha: float | None = None,
    grid: tuple[int, int] | None = None,
    ratio: float | None = None,
    means: tuple[float, float] | None = None,
) -> Figure:
    """C1: the per-patch mean grid distance d_p from p to its U' entries (filled) against r_p,
    the same for as many uniform random entries of row p (outline), each normalised to a
    density. edges ``[bins + 1]``, hit / random ``[bins]`` counts; ``means`` (mean d, mean r)
    are drawn as dashed lines; ``ratio`` (C1's effect) goes in the title."""
    e = _np(edges).astype(np.float64)
    fig = Figure(figsize=(6.4, 4.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.stairs(_density(hit, e), e, fill=True, alpha=0.45, color=COLORS[0],
              label="U' hits, $d_p$")  # fmt: skip
    ax.stairs(_density(random, e), e, lw=1.8, color=COLORS[1],
              label="random entries of row p, $r_p$")  # fmt: skip
    if means is not None:
        for m, c, name in zip(means, COLORS[:2], ("mean $d_p$", "mean $r_p$"), strict=True):
            ax.axvline(m, color=c, ls="--", lw=1.2, label=f"{name} = {m:.2f}")
    ax.set_xlabel("mean grid distance from patch p to its entries (patch units)")
    ax.set_ylabel("density over patches")
    where = f" at α = {alpha:g}" if alpha is not None else ""
    on = f", {grid[0]}x{grid[1]} grid" if grid is not None else ""
    title = f"C1: distance of U' interactions vs random{where}{on}"
    if ratio is not None:
        title += f"\nmean per-image Σd/Σr = {ratio:.3f} (< 1: more local than chance)"
    ax.set_title(title, fontsize=10)
    ax.set_xlim(e[0], e[-1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def perturbation_figure(
    x: ArrayLike,
    curves: Mapping[str, Band],
    *,
    reference: tuple[str, Band | tuple[float, float, float]] | None = None,
    xlabel: str,
    title: str,
    log_x: bool = False,
    notes: Sequence[str] | None = None,
) -> Figure:
    """Accuracy (%) vs ``x``: one line with markers and a shaded CI band per curve
    (``{label: (estimate, low, high)}``, accuracies in 0..1), optionally a horizontal
    ``reference`` (label, (estimate, low, high) scalars) with its band, and ``notes`` (one
    short text per x, e.g. E_O / N^2) written under the first curve's points."""
    xs = _np(x).astype(np.float64)
    fig = Figure(figsize=(6.6, 4.4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    if reference is not None:
        label, (est, low, high) = reference
        est, low, high = (float(np.mean(_np(v))) for v in (est, low, high))
        ax.axhline(100 * est, color="black", lw=1.2, ls="--", label=f"{label} ({100 * est:.1f} %)")
        ax.axhspan(100 * low, 100 * high, color="black", alpha=0.08, lw=0)
    markers = "osD^v"
    for k, (label, (est, low, high)) in enumerate(curves.items()):
        color = COLORS[k % len(COLORS)]
        y = 100 * _np(est).astype(np.float64)
        ax.plot(xs, y, marker=markers[k % len(markers)], ms=5, lw=1.6, color=color, label=label)
        ax.fill_between(xs, 100 * _np(low).astype(np.float64), 100 * _np(high).astype(np.float64),
                        color=color, alpha=0.18, lw=0)  # fmt: skip
        if k == 0 and notes is not None:
            for xv, yv, note in zip(xs, y, notes, strict=True):
                ax.annotate(note, (xv, yv), textcoords="offset points", xytext=(0, -14),
                            ha="center", fontsize=7, color=color)  # fmt: skip
    if log_x:
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.minorticks_off()
    else:
        ax.set_xticks(xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%), 95 % CI band")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def alpha_curves_figure(
    alphas: ArrayLike,
    awd: Band,
    random: Band,
    centred: Band,
    unrestricted: tuple[float, float, float] | None = None,
    eo_ratio: ArrayLike | None = None,
) -> Figure:
    """C2: the teacher's top-1 with attention restricted at inference to AWD(α) windows, to
    random windows of the same size containing p and to centred ones, vs α (log x), with the
    unrestricted teacher as a dashed line; ``eo_ratio`` (E_O / N^2 per α) annotates AWD."""
    notes = None if eo_ratio is None else [f"{v:.0%} of N²" for v in _np(eo_ratio)]
    return perturbation_figure(
        alphas,
        {"AWD(α) windows": awd, "random windows, same w×h": random,
         "centred windows, same w×h": centred},
        reference=None if unrestricted is None else ("unrestricted teacher", unrestricted),
        xlabel="α (share of U's N² entries in U')", log_x=True, notes=notes,
        title="C2: teacher top-1 with attention restricted at inference",
    )  # fmt: skip


def beta_curves_figure(
    betas: ArrayLike,
    lowest: Band,
    random: Band,
    highest: Band,
    unrestricted: tuple[float, float, float] | None = None,
) -> Figure:
    """C3: the teacher's top-1 with floor(βN) patches zeroed at every block input: the lowest
    column variance of U (DIP), random ones, the highest-variance ones, vs β."""
    return perturbation_figure(
        betas,
        {"DIP: lowest-variance patches zeroed": lowest, "random patches zeroed": random,
         "highest-variance patches zeroed": highest},
        reference=None if unrestricted is None else ("no patch zeroed", unrestricted),
        xlabel="β (share of the N patches zeroed)",
        title="C3: teacher top-1 with patches zeroed at every block (perturbation curve)",
    )  # fmt: skip
