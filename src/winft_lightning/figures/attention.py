"""Figures of U and attention (Fig. 3, 5/6, rollout): attention rows of chosen patches, rows
of U, the DIP figure and attention rollout beside U's column variance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, SubFigure
from torch import Tensor

from winft_lightning.core import interactions as ia
from winft_lightning.figures.base import (
    DPI,
    PANEL,
    ArrayLike,
    Grid,
    _colorbar,
    _image_axes,
    _label_outer,
    _log_norm,
    _mark_patch,
    _new_figure,
    _np,
    _overlay,
    _patch_title,
    _to_hw,
    to_hwc,
)

# ---------------------------------------------------------------- Fig. 3


def attention_maps_figure(
    image: ArrayLike,
    rows: ArrayLike,
    patches: Sequence[int],
    grid: Grid,
    blocks: Sequence[int] | None = None,
) -> Figure:
    """Fig. 3(a): attention maps of chosen patches across blocks.

    rows: ``[l, n, N]`` (or ``[l, n, h, w]``) head-averaged attention rows ``A_i[p, :]`` of
    the n chosen ``patches`` in each of l blocks. Grid of l x n panels (rows: blocks, cols:
    patches), each map over the image; one colour scale (and colourbar) per block.
    """
    img, arr = to_hwc(image), _np(rows)
    l, n = arr.shape[:2]
    if n != len(patches):
        raise ValueError(f"rows has {n} patches, got {len(patches)} patch ids")
    blocks = list(blocks) if blocks is not None else list(range(1, l + 1))
    fig = _new_figure(n, l, PANEL + 0.3 / max(n, 1), PANEL)
    axes = np.asarray(fig.subplots(l, n, squeeze=False))
    for i in range(l):
        lo, hi = float(arr[i].min()), float(arr[i].max())
        norm = Normalize(lo, max(hi, lo + 1e-12))  # one scale per block, min to max
        for j, p in enumerate(patches):
            ax = axes[i, j]
            _image_axes(ax, img, grid, grey=True)
            im = _overlay(ax, img, _to_hw(arr[i, j], grid), norm=norm)
            _mark_patch(ax, p, img, grid, color="cyan")
            ax.set_title(f"$A_{{{blocks[i]}}}$, {_patch_title(p, grid)}", fontsize=8)
        _colorbar(fig, im, axes[i, :].tolist(), f"attention (block {blocks[i]})")
    _label_outer(axes)
    fig.suptitle("Attention of chosen patches (cyan) across blocks, mean over heads")
    return fig


def uncertainty_rows_figure(
    image: ArrayLike, u: ArrayLike, patches: Sequence[int], grid: Grid
) -> Figure:
    """Fig. 3(b): row ``U[p, :]`` of the uncertainty map as an ``[h, w]`` map for each chosen
    patch, over the image. u: ``[N, N]``. One panel + colourbar per patch."""
    img, um = to_hwc(image), _np(u)
    n = len(patches)
    fig = _new_figure(n, 1, PANEL + 0.6, PANEL + 0.3)
    axes = np.asarray(fig.subplots(1, n, squeeze=False))
    for j, p in enumerate(patches):
        ax = axes[0, j]
        _image_axes(ax, img, grid, grey=True)
        im = _overlay(ax, img, _to_hw(um[p], grid))
        _mark_patch(ax, p, img, grid, color="cyan")
        ax.set_title(f"U row, {_patch_title(p, grid)}", fontsize=8)
        cb = _colorbar(fig, im, ax, "U[p, i]")
        cb.formatter.set_powerlimits((-2, 2))
    _label_outer(axes)
    fig.suptitle("Patch-interaction uncertainty U across blocks (rows of U)")
    return fig


# ---------------------------------------------------------------- Fig. 5 / 6


def _variance_and_order(u: ArrayLike) -> tuple[Tensor, Tensor]:
    """``v_p`` and the DIP order of one image's U ``[N, N]``, by interactions' own functions
    (a bare call; :class:`analysis.Analysis` has them already)."""
    ut = torch.as_tensor(_np(u))[None]
    return ia.column_variance(ut)[0], ia.dip_order(ut)[0]


def dip_figure(
    image: ArrayLike,
    u: ArrayLike,
    grid: Grid,
    betas: Sequence[float],
    order: ArrayLike | None = None,
    variance: ArrayLike | None = None,
) -> Figure:
    """Fig. 5/6: the ``[N, N]`` U map (log colour), the sorted column variances
    ``v_p = Var_i U[i, p]`` with each beta's drop count marked, and the dropped patches D
    (red) over the image for every beta. Axes: U, colourbar, variances, one per beta.
    order ``[N]`` (``interactions.dip_order``) and variance ``[N]``
    (``interactions.column_variance``) default to those of ``u``."""
    img, um = to_hwc(image), _np(u).astype(np.float64)
    if order is None or variance is None:
        variance, order = _variance_and_order(u)
    v = _np(variance).astype(np.float64)
    order = _np(order).astype(np.int64)
    betas = list(betas)
    fig = Figure(
        figsize=(max(len(betas), 2) * PANEL + 0.5, 2 * PANEL + 1.6), dpi=DPI, layout="constrained"
    )
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1])
    ax_u, ax_v = top.subplots(1, 2)
    _u_panel(top, ax_u, um, order, betas)
    _variance_panel(ax_v, v, order, betas)
    axes = np.asarray(bottom.subplots(1, len(betas), squeeze=False))
    for ax, beta in zip(axes[0], betas, strict=True):
        _dropped_panel(ax, img, grid, order, beta)
    _label_outer(axes)
    fig.suptitle("Indiscriminative patches (DIP): U, column variance, dropped patches (red)")
    return fig


def _u_panel(
    top: SubFigure, ax: Axes, um: np.ndarray, order: np.ndarray, betas: list[float]
) -> None:
    """(a) U ``[N, N]`` in log colour, the patches dropped at the largest beta marked above."""
    n = um.shape[0]
    im = ax.imshow(
        np.clip(um, 1e-300, None),
        cmap="viridis",
        norm=_log_norm(um),
        interpolation="nearest",
        extent=(-0.5, n - 0.5, n - 0.5, -0.5),
    )
    ax.set_xlabel("key patch i (column)", fontsize=8)
    ax.set_ylabel("query patch p (row)", fontsize=8)
    ax.set_title(f"(a) U, {n}x{n} (log scale)", fontsize=9)
    ax.tick_params(labelsize=7)
    _colorbar(top, im, ax, "U (log)")
    if betas and max(betas) > 0:
        dropped = order[: ia.dip_drop_count(max(betas), n)]
        ax.plot(dropped, np.full(len(dropped), -0.5), "v", color="red", ms=3, clip_on=False,
                label=f"dropped at β={max(betas):g}")  # fmt: skip
        ax.legend(loc="lower right", fontsize=7, framealpha=0.8)


def _variance_panel(ax: Axes, v: np.ndarray, order: np.ndarray, betas: list[float]) -> None:
    """(b) the column variances in DIP order, each beta's drop count marked."""
    n = v.shape[0]
    ax.plot(np.arange(n), v[order], color="tab:blue", lw=1.2)
    ax.set_yscale("log" if (v > 0).all() else "linear")
    colors = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    for k, beta in enumerate(sorted(b for b in betas if b > 0)):
        d = ia.dip_drop_count(beta, n)
        c = colors[k % len(colors)]
        ax.axvline(d - 0.5, color=c, ls="--", lw=1, label=f"β={beta:g}: drop {d}")
        ax.plot(np.arange(d), v[order[:d]], ".", color=c, ms=4)
    ax.set_xlabel("patch rank (ascending column variance)", fontsize=8)
    ax.set_ylabel("$v_p$ = Var$_i$ U[i, p]", fontsize=8)
    ax.set_title("(b) sorted column variance", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if any(b > 0 for b in betas):
        ax.legend(fontsize=7)


def _dropped_panel(ax: Axes, img: np.ndarray, grid: Grid, order: np.ndarray, beta: float) -> None:
    """(c) the patches DIP drops at ``beta``, red over the image."""
    n = order.shape[0]
    _image_axes(ax, img, grid)
    d = ia.dip_drop_count(beta, n)
    mask = np.zeros(n)
    mask[order[:d]] = 1.0
    hw = np.ma.masked_where(mask.reshape(grid) == 0, mask.reshape(grid))
    # red, not black: the patches DIP drops are often the (black) background itself
    _overlay(ax, img, hw, cmap="Reds", alpha=0.6, norm=Normalize(0.0, 1.0))
    ax.set_title(f"(c) β={beta:g}: {d} of {n} dropped", fontsize=8)


# ---------------------------------------------------------------- rollout vs U


def rollout_figure(
    images: Sequence[ArrayLike] | ArrayLike,
    rollout: ArrayLike,
    u: ArrayLike | None,
    grid: Grid,
    variance: ArrayLike | None = None,
) -> Figure:
    """Attention rollout beside U, one row per image: input, rollout relevance ``[N]`` of
    each patch for CLS, and U's column variance ``v_p`` (log colour; low = indiscriminative).
    images ``[B, 3, H, W]`` (or a list), rollout ``[B, N]`` (``interactions.attention_rollout``),
    u ``[B, N, N]`` or variance ``[B, N]`` (``interactions.column_variance``)."""
    roll = _np(rollout)
    if variance is None:
        variance = ia.column_variance(torch.as_tensor(_np(u)))
    var = _np(variance).astype(np.float64)
    b = roll.shape[0]
    fig = _new_figure(3, b, PANEL + 0.5, PANEL + 0.2)
    axes = np.asarray(fig.subplots(b, 3, squeeze=False))
    for i in range(b):
        img = to_hwc(images[i])
        _image_axes(axes[i, 0], img, grid)
        axes[i, 0].set_title(f"image {i}", fontsize=8)
        _image_axes(axes[i, 1], img, grid, grey=True)
        im = _overlay(axes[i, 1], img, _to_hw(roll[i], grid))
        axes[i, 1].set_title("attention rollout (CLS)", fontsize=8)
        cb = _colorbar(fig, im, axes[i, 1], "relevance")
        cb.formatter.set_powerlimits((-2, 2))
        v = _to_hw(var[i], grid)
        _image_axes(axes[i, 2], img, grid, grey=True)
        im = _overlay(axes[i, 2], img, v, cmap="viridis", norm=_log_norm(v))
        axes[i, 2].set_title("U column variance $v_p$", fontsize=8)
        _colorbar(fig, im, axes[i, 2], "$v_p$ (log)")
    _label_outer(axes)
    fig.suptitle("Attention rollout vs patch-interaction uncertainty")
    return fig
