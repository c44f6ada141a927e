"""Figures of the claims (SPEC.md 9): every comparison is drawn as its paired difference with
that difference's CI band, never as two conditions each with its own band. Drawing only:
numbers in (from :mod:`winft_lightning.core.claims_table`), a Figure out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from winft_lightning.figures.base import DPI

__all__ = [
    "attention_distance_figure",
    "difference_figure",
    "perturbation_curves_figure",
    "trained_deltas_figure",
    "verdict_figure",
]

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
LINES = ("-", "--", ":", "-.")


def _margin_scale(ax, axis: str, linthresh: float) -> None:
    """A symmetric log scale, linear within ±``linthresh`` (the margin) and logarithmic beyond:
    rows near the margin and rows tens of margins away are both readable (docs/SPEC.md 10a).
    Ticks at 0, ±margin and 1, 3, 10, 30, ... beyond it."""
    from matplotlib.ticker import FixedLocator, NullLocator

    getattr(ax, f"set_{axis}scale")("symlog", linthresh=linthresh, linscale=1.0)
    beyond = [m * 10.0**e for e in range(-3, 5) for m in (1, 3) if m * 10.0**e > 1.5 * linthresh]
    ticks = sorted({0.0, linthresh, -linthresh, *beyond, *(-v for v in beyond)})
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    target.set_major_formatter(lambda v, _: f"{v:g}")


def _pooled_bar(ax, row: Mapping[str, Any], y: float, first: bool) -> None:
    """The row's interval pooled over the teachers (SPEC 10), black, below its teachers."""
    pooled = row.get("pooled")
    if not isinstance(pooled, Mapping) or pooled.get("effect") is None:
        return
    m = row["margin"]
    ax.errorbar(pooled["effect"] / m, y, xerr=[[(pooled["effect"] - pooled["low"]) / m],
                [(pooled["high"] - pooled["effect"]) / m]], fmt="D", ms=4, color="black",
                capsize=2, label="pooled over teachers (simultaneous CI)" if first else None)  # fmt: skip


def verdict_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """One line per row: each teacher's effect and 95 % CI in units of the row's margin, and
    the interval pooled over the teachers (black; the verdict's), so that every claim shares
    one axis; the grey band (-1, 1) is "negligible", the claim
    predicts > 0 and "supported" needs the whole CI right of 1. The axis is symmetric-log,
    linear within ±1 margin (C3's rows sit tens of margins out)."""
    fig = Figure(figsize=(8.4, 0.42 * len(rows) + 1.7), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.axvspan(-1, 1, color="black", alpha=0.08, lw=0, label="|effect| < margin")
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(1, color="black", lw=0.8, ls="--", label="1 margin (supported: CI right of it)")
    seeds = list(rows[0]["teachers"]) if rows else []
    for i, row in enumerate(rows):
        for k, seed in enumerate(seeds):
            cell = row["teachers"][seed]
            if cell["effect"] is None:
                continue
            y = i + (k - (len(seeds) - 1) / 2) * 0.22
            m = row["margin"]
            ax.errorbar(cell["effect"] / m, y, xerr=[[(cell["effect"] - cell["low"]) / m],
                        [(cell["high"] - cell["effect"]) / m]], fmt="o", ms=4,
                        color=COLORS[k % len(COLORS)], capsize=2,
                        label=f"teacher {seed}" if i == 0 else None)  # fmt: skip
        _pooled_bar(ax, row, i + (len(seeds) + 1) / 2 * 0.22, first=i == 0)
    _margin_scale(ax, "x", 1.0)
    ax.set_yticks(range(len(rows)), [f"{r['id']}: {r['verdict']}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_ylabel("row: verdict over the teachers", fontsize=8)
    ax.set_xlabel("effect / margin, 95 % CI (the claim predicts > 0)\n"
                  "symmetric log scale: linear within ±1 margin, logarithmic beyond")  # fmt: skip
    ax.set_title("Verdicts: each teacher's effect in units of its row's margin", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.legend(fontsize=7, loc="outside lower center", ncols=3)
    return fig


def difference_figure(
    x: Sequence[float],
    series: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
    *,
    margin: float,
    xlabel: str,
    title: str,
    log_x: bool = False,
) -> Figure:
    """Paired differences in percentage points vs ``x``, one panel per comparison: ``series``
    is ``{label: {teacher: [[estimate, low, high] per x]}}`` (fractions), one colour per
    teacher, each with its CI band; the hatched band between dashed lines is ±margin. The y
    axis is symmetric-log, linear within ±margin, so the band stays visible beside
    differences of tens of points."""
    xs = np.asarray(x, dtype=np.float64)
    cols = min(len(series), 3)
    rows = -(-len(series) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows + 0.5), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for ax, (label, teachers) in zip(axes, series.items(), strict=False):
        ax.axhspan(-100 * margin, 100 * margin, facecolor="0.9", edgecolor="0.7", hatch="//",
                   lw=0)  # fmt: skip
        for level in (-100 * margin, 100 * margin):
            ax.axhline(level, color="0.3", lw=0.8, ls="--")
        ax.axhline(0, color="black", lw=0.8)
        for k, (seed, points) in enumerate(teachers.items()):
            color = COLORS[k % len(COLORS)]
            est, low, high = (
                100 * np.asarray(v, dtype=np.float64) for v in zip(*points, strict=True)
            )
            ax.plot(xs, est, marker="o", ms=3, lw=1.4, color=color, label=f"teacher {seed}")
            ax.fill_between(xs, low, high, color=color, alpha=0.15, lw=0)
        if log_x:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs, [f"{v:g}" for v in xs], fontsize=8)
        _margin_scale(ax, "y", 100 * margin)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(series) :]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("paired difference in top-1 (pp)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}\n95 % CI bands; hatched: ±margin ({100 * margin:g} pp); y symmetric "
                 "log, linear within ±margin", fontsize=10)  # fmt: skip
    return fig


def perturbation_curves_figure(
    betas: Sequence[float],
    accuracy: Mapping[str, Mapping[str, Sequence[float]]],
    labels: Mapping[str, str],
) -> Figure:
    """Top-1 vs beta (0 = the unrestricted teacher) for each ordering, dropping its lowest
    patches first (left) and its highest first (right). ``accuracy`` is per teacher,
    ``{teacher: {"<ordering>:<lowest|highest>": [top-1 per beta]}}``: the line is the mean over
    the teachers, the band their range (min to max; the teacher is the unit that replicates).
    Each ordering's own band, not a comparison: the paired CIs are the difference figure's."""
    fig = Figure(figsize=(10.0, 4.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    teachers = list(accuracy.values())
    for ax, direction in zip(axes, ("lowest", "highest"), strict=True):
        for c, (ordering, label) in enumerate(labels.items()):
            key = f"{ordering}:{direction}"
            ys = 100 * np.asarray([t[key] for t in teachers], dtype=np.float64)  # [K, betas]
            color = COLORS[c % len(COLORS)]
            ax.plot(betas, ys.mean(axis=0), marker="o", ms=3, lw=1.5, color=color, label=label)
            if len(teachers) > 1:
                ax.fill_between(betas, ys.min(axis=0), ys.max(axis=0), color=color, alpha=0.15,
                                lw=0)  # fmt: skip
        ax.set_xlabel("β (share of the N patches dropped at every block)")
        ax.set_title(f"{direction} first ({'negative' if direction == 'lowest' else 'positive'} "
                     "perturbation)", fontsize=10)  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"top-1 (%): mean over {len(teachers)} teachers")
    axes[0].legend(fontsize=8)
    if len(teachers) > 1:
        fig.suptitle(f"Bands: the range over the {len(teachers)} teachers (min to max), not a "
                     "CI; paired CIs: the C3 difference figure", fontsize=9)  # fmt: skip
    return fig


def attention_distance_figure(
    profiles: Mapping[str, Mapping[str, Any]],
    references: Mapping[str, float],
    title: str,
    patch_size: int | None = None,
) -> Figure:
    """Mean attention distance per block (x) and head (one dot each), one panel per teacher
    (``{teacher: {"blocks": [[per head] per block], "hits": U' hit distance}}``), with the
    uniform references (``{label: distance}``) as grey lines and U's hits as a red line. The
    values are in patches with each query renormalised over the patch keys
    (:func:`~winft_lightning.core.attention_distance.mean_attention_distance`); with
    ``patch_size`` a right axis gives the same values in pixels (patches x patch size, still
    renormalised: not Dosovitskiy et al.'s, which leaves the class token's share at 0)."""
    fig = Figure(figsize=(3.6 * len(profiles) + 2.4, 4.2), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(profiles), sharey=True, squeeze=False)).ravel()
    for ax, (seed, prof) in zip(axes, profiles.items(), strict=True):
        blocks = np.asarray(prof["blocks"], dtype=np.float64)
        for b, heads in enumerate(blocks):
            ax.scatter(np.full(len(heads), b), heads, s=14, color=COLORS[0],
                       label="a head" if b == 0 else None)  # fmt: skip
        for k, (label, level) in enumerate(references.items()):
            ax.axhline(level, color="grey", lw=1.0, ls=LINES[k % len(LINES)], label=label)
        ax.axhline(prof["hits"], color="tab:red", lw=1.4, label="U' hits (mean $d_p$)")
        ax.set_xticks(range(len(blocks)))
        ax.set_xlabel("block")
        ax.set_title(f"teacher {seed}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean attention distance (patches)")
    if patch_size:
        right = axes[-1].secondary_yaxis(
            "right", functions=(lambda v: v * patch_size, lambda v: v / patch_size)
        )
        right.set_ylabel(f"pixels (patches × {patch_size})")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("Convention: class token excluded as query and key; each query's weights "
                  "renormalised over the patch keys (Dosovitskiy et al. / probing-vits do not\n"
                  "renormalise: there a head's share on the class token counts as distance 0, "
                  "so their pixels are at most the right axis's)", fontsize=7)  # fmt: skip
    return fig


def trained_deltas_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """One line per trained comparison: each seed's paired delta top-1 (dots), their mean with
    its t interval (bar), the ±margin band, and the MDE (tick) in percentage points."""
    fig = Figure(figsize=(7.6, 0.55 * len(rows) + 1.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    margin = 100 * rows[0]["margin"] if rows else 0.5
    ax.axvspan(-margin, margin, color="black", alpha=0.08, lw=0, label=f"±margin ({margin:g} pp)")
    ax.axvline(0, color="black", lw=0.8)
    for i, row in enumerate(rows):
        deltas = 100 * np.asarray(row["details"]["deltas"], dtype=np.float64)
        ax.scatter(deltas, np.full(len(deltas), i + 0.18), s=14, color=COLORS[1],
                   label="a seed" if i == 0 else None)  # fmt: skip
        if np.isfinite(row["low"]):
            est, low, high = (100 * row[k] for k in ("effect", "low", "high"))
            ax.errorbar(est, i, xerr=[[est - low], [high - est]], fmt="o", ms=5, capsize=3,
                        color=COLORS[0], label="mean, 95 % t interval" if i == 0 else None)  # fmt: skip
            ax.plot([100 * row["mde"]] * 2, [i - 0.25, i + 0.25], color="tab:red", lw=1.6,
                    label="MDE (80 % power)" if i == 0 else None)  # fmt: skip
    ax.set_yticks(range(len(rows)), [f"{r['id']}: {r['verdict']}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference in top-1 (pp), treated − control")
    ax.set_title("Trained comparisons, paired by seed (SPEC 9)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.legend(fontsize=7, loc="outside lower center", ncols=4)
    return fig
