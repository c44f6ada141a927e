"""The paper's figures (Fig. 3-7, 10), attention rollout and the accuracy/E_O trade-off.

Pure plotting: the numbers come from :mod:`winft_lightning.analysis` (U, windows, DIP order,
rollout, fields); every function takes tensors or arrays for ONE image (unless stated) and
returns a :class:`matplotlib.figure.Figure` (no pyplot state, Agg-safe); :func:`save` writes
it atomically. Shapes: image ``[3, H, W]`` in [0, 1] (tensor or array) or uint8 ``[H, W, 3]``;
grid ``(h, w)``; N = h * w patches, row-major (x_p = p % w, y_p = p // w); U ``[N, N]``;
windows ``[N, 4]`` inclusive ``(x_l, y_t, x_r, y_b)`` in patch units; fields ``[N, N]`` bool.
Overlays are drawn in pixel coordinates with patch p covering
``[x_p * P, (x_p + 1) * P) x [y_p * P, (y_p + 1) * P)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from winft_lightning import interactions as ia

Grid = tuple[int, int]
ArrayLike = Tensor | np.ndarray

__all__ = [
    "attention_maps_figure",
    "dip_figure",
    "display_images",
    "field_figure",
    "responsive_field_figure",
    "rollout_figure",
    "save",
    "to_hwc",
    "tradeoff_figure",
    "uncertainty_rows_figure",
    "window_figure",
]

DPI = 120
PANEL = 2.6  # inches per image panel
HEAT = "inferno"


# ---------------------------------------------------------------- helpers


def to_hwc(image: ArrayLike) -> np.ndarray:
    """Image ``[3, H, W]`` / ``[H, W, 3]`` / ``[H, W]`` (float in [0, 1] or uint8) ->
    float ``[H, W, 3]`` in [0, 1]."""
    arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image [3,H,W] or [H,W,3], got shape {arr.shape}")
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.clip(arr, 0.0, 1.0)


def display_images(images: Tensor) -> Tensor:
    """Per-image min-max rescale of ``[B, 3, H, W]`` to [0, 1] (for normalised model inputs)."""
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp_min(1e-8)


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _grey(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _patch_px(img: np.ndarray, grid: Grid) -> tuple[float, float]:
    """Patch size in pixels ``(P_x, P_y)``; the image must tile the grid."""
    (hh, ww), (h, w) = img.shape[:2], grid
    if hh % h or ww % w:
        raise ValueError(f"image {ww}x{hh} px does not tile the patch grid {h}x{w}")
    return ww / w, hh / h


def _cell(p: int, grid: Grid) -> tuple[int, int]:
    return p % grid[1], p // grid[1]


def _to_hw(values: ArrayLike, grid: Grid) -> np.ndarray:
    """A per-patch map ``[N]`` or ``[h, w]`` -> ``[h, w]`` float."""
    arr = _np(values).astype(np.float64)
    if arr.size != grid[0] * grid[1]:
        raise ValueError(f"map of {arr.size} values does not fit grid {grid}")
    return arr.reshape(grid)


def _new_figure(cols: int, rows: int, width: float = PANEL, height: float = PANEL) -> Figure:
    return Figure(figsize=(cols * width, rows * height), dpi=DPI, layout="constrained")


def _image_axes(ax: Axes, img: np.ndarray, grid: Grid, grey: bool = False, dim: float = 1.0):
    """Draw the image in pixel coordinates with light lines on the patch borders."""
    hh, ww = img.shape[:2]
    px, py = _patch_px(img, grid)
    shown = _grey(img) * dim if grey else img * dim
    ax.imshow(shown, extent=(0, ww, hh, 0), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    h, w = grid
    ax.vlines([x * px for x in range(1, w)], 0, hh, colors="white", linewidths=0.4, alpha=0.35)
    ax.hlines([y * py for y in range(1, h)], 0, ww, colors="white", linewidths=0.4, alpha=0.35)
    step_x, step_y = max(1, math.ceil(w / 4)), max(1, math.ceil(h / 4))
    ax.set_xticks([x * px for x in range(0, w + 1, step_x)])
    ax.set_yticks([y * py for y in range(0, h + 1, step_y)])
    ax.tick_params(labelsize=7)
    ax.set_xlim(0, ww)
    ax.set_ylim(hh, 0)
    ax.set_xlabel("x (px)", fontsize=8)
    ax.set_ylabel("y (px)", fontsize=8)


def _overlay(ax: Axes, img: np.ndarray, hw: np.ndarray, cmap: str = HEAT, alpha=0.7, norm=None):
    """Per-patch map ``[h, w]`` drawn over the image, one colour cell per patch."""
    hh, ww = img.shape[:2]
    return ax.imshow(
        hw, extent=(0, ww, hh, 0), cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest"
    )


def _mark_patch(ax: Axes, p: int, img: np.ndarray, grid: Grid, color: str = "red", lw=1.8):
    px, py = _patch_px(img, grid)
    x, y = _cell(p, grid)
    rect = Rectangle((x * px, y * py), px, py, fill=False, edgecolor=color, linewidth=lw)
    rect.set_gid(f"patch:{p}")
    ax.add_patch(rect)
    return rect


def _patch_title(p: int, grid: Grid) -> str:
    x, y = _cell(p, grid)
    return f"patch {p} (x={x}, y={y})"


def _label_outer(axes: np.ndarray) -> None:
    """Keep axis labels only on the left column / bottom row of a panel grid."""
    rows, cols = axes.shape
    for r in range(rows):
        for c in range(cols):
            if c > 0:
                axes[r, c].set_ylabel("")
            if r < rows - 1:
                axes[r, c].set_xlabel("")


def _colorbar(fig: Figure, mappable, ax, label: str):
    cb = fig.colorbar(mappable, ax=ax, shrink=0.85, pad=0.02)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    cb.ax.yaxis.get_offset_text().set_fontsize(7)
    return cb


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


# ---------------------------------------------------------------- Fig. 4


def _window_rect(win: Sequence[int], img: np.ndarray, grid: Grid, **kw) -> Rectangle:
    px, py = _patch_px(img, grid)
    x_l, y_t, x_r, y_b = (int(v) for v in win)
    return Rectangle((x_l * px, y_t * py), (x_r - x_l + 1) * px, (y_b - y_t + 1) * py, **kw)


def window_figure(
    image: ArrayLike,
    windows: ArrayLike | Mapping[float, ArrayLike],
    patches: Sequence[int],
    grid: Grid,
) -> Figure:
    """Fig. 4(c): AWD window of each chosen patch drawn on the image.

    windows: ``[N, 4]`` for one alpha, or ``{alpha: [N, 4]}`` (one panel row per alpha).
    The window rectangle (gid ``window:<p>``) spans pixels ``[x_l*P, (x_r+1)*P)`` x
    ``[y_t*P, (y_b+1)*P)``; the current patch is outlined in green (gid ``patch:<p>``).
    """
    img = to_hwc(image)
    sets = dict(windows) if isinstance(windows, Mapping) else {None: windows}
    fig = _new_figure(len(patches), len(sets))
    axes = np.asarray(fig.subplots(len(sets), len(patches), squeeze=False))
    for i, (alpha, win) in enumerate(sets.items()):
        wins = _np(win).astype(np.int64)
        for j, p in enumerate(patches):
            ax = axes[i, j]
            _image_axes(ax, img, grid)
            x_l, y_t, x_r, y_b = wins[p]
            fill = _window_rect(wins[p], img, grid, facecolor="yellow", alpha=0.3, lw=0)
            edge = _window_rect(wins[p], img, grid, fill=False, edgecolor="yellow", lw=1.8)
            edge.set_gid(f"window:{p}")
            ax.add_patch(fill)
            ax.add_patch(edge)
            _mark_patch(ax, p, img, grid, color="lime")
            head = f"α={alpha:g}, " if alpha is not None else ""
            ax.set_title(
                f"{head}patch {p}: window {x_r - x_l + 1}x{y_b - y_t + 1}\n"
                f"x {x_l}-{x_r}, y {y_t}-{y_b} (patches)",
                fontsize=8,
            )
    _label_outer(axes)
    fig.legend(
        handles=[
            Patch(facecolor="none", edgecolor="lime", label="current patch"),
            Patch(facecolor=(1, 1, 0, 0.4), edgecolor="yellow", label="AWD window"),
        ],
        loc="outside lower center",
        ncols=2,
        fontsize=8,
    )
    fig.suptitle("Adaptive attention windows (AWD)")
    return fig


# ---------------------------------------------------------------- Fig. 10


def _winft_row(winft_w: ArrayLike | Mapping[int, ArrayLike], p: int, grid: Grid) -> np.ndarray:
    if isinstance(winft_w, Mapping):
        return _to_hw(winft_w[p], grid)
    arr = _np(winft_w)
    n = grid[0] * grid[1]
    if arr.shape not in ((n, n), (n, *grid)):
        raise ValueError(f"winft_w must be [N, N] or [N, h, w] (N={n}), got {arr.shape}")
    return _to_hw(arr[p], grid)


def responsive_field_figure(
    image: ArrayLike,
    field: ArrayLike,
    patches: Sequence[int],
    grid: Grid,
    winft_w: ArrayLike | Mapping[int, ArrayLike] | None = None,
    num_blocks: int | None = None,
) -> Figure:
    """Fig. 10: ground-truth responsive field S_p vs WinfT's predicted sum over blocks of W.

    field: ``[N, N]`` bool (``interactions.responsive_field`` for one image). winft_w:
    ``sum_l W_l`` as ``[N, N]`` / ``[N, h, w]`` (row p for patch p), or ``{p: [h, w] or
    [N]}``; None leaves the WinfT column out. Rows: patches; columns: image with the patch,
    S_p, and sum W (colour 0..num_blocks, default the maximum)."""
    img, f = to_hwc(image), _np(field).astype(bool)
    cols = 3 if winft_w is not None else 2
    fig = _new_figure(cols, len(patches), PANEL + 0.3, PANEL)
    axes = np.asarray(fig.subplots(len(patches), cols, squeeze=False))
    vmax = None
    if winft_w is not None:
        peak = max(float(_winft_row(winft_w, p, grid).max()) for p in patches)
        vmax = float(num_blocks) if num_blocks else max(peak, 1.0)
    for i, p in enumerate(patches):
        a, b = axes[i, 0], axes[i, 1]
        _image_axes(a, img, grid)
        _mark_patch(a, p, img, grid, color="lime")
        a.set_title(f"input, {_patch_title(p, grid)}", fontsize=8)
        mask = _to_hw(f[p], grid)
        _image_axes(b, img, grid, dim=0.35)
        _overlay(b, img, np.ma.masked_where(mask == 0, mask), cmap="autumn_r", alpha=0.55)
        _mark_patch(b, p, img, grid, color="lime")
        b.set_title(f"ground truth $S_p$ (|S_p|={int(mask.sum())})", fontsize=8)
        if winft_w is not None:
            c = axes[i, 2]
            _image_axes(c, img, grid, grey=True)
            im = _overlay(
                c,
                img,
                _winft_row(winft_w, p, grid),
                cmap="viridis",
                alpha=0.75,
                norm=Normalize(0.0, vmax),
            )
            _mark_patch(c, p, img, grid, color="red")
            c.set_title("WinfT prediction: sum of W over blocks", fontsize=8)
            cb = _colorbar(fig, im, c, "blocks with W=1")
            cb.locator = MaxNLocator(integer=True)
            cb.update_ticks()
    _label_outer(axes)
    fig.suptitle("Responsive field: ground truth (yellow) vs WinfT predicted windows")
    return fig


# ---------------------------------------------------------------- Fig. 5 / 6


def _log_norm(values: np.ndarray) -> LogNorm:
    pos = values[values > 0]
    vmax = float(pos.max()) if pos.size else 1.0
    vmin = max(float(pos.min()) if pos.size else vmax * 1e-6, vmax * 1e-6)
    return LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10))


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
    n = um.shape[0]
    if order is None or variance is None:
        variance, order = _variance_and_order(u)
    v = _np(variance).astype(np.float64)
    order = _np(order).astype(np.int64)
    betas = list(betas)
    cols = max(len(betas), 2)
    fig = Figure(figsize=(cols * PANEL + 0.5, 2 * PANEL + 1.6), dpi=DPI, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.25, 1])
    ax_u, ax_v = top.subplots(1, 2)

    im = ax_u.imshow(
        np.clip(um, 1e-300, None),
        cmap="viridis",
        norm=_log_norm(um),
        interpolation="nearest",
        extent=(-0.5, n - 0.5, n - 0.5, -0.5),
    )
    ax_u.set_xlabel("key patch i (column)", fontsize=8)
    ax_u.set_ylabel("query patch p (row)", fontsize=8)
    ax_u.set_title(f"(a) U, {n}x{n} (log scale)", fontsize=9)
    ax_u.tick_params(labelsize=7)
    _colorbar(top, im, ax_u, "U (log)")
    if betas and max(betas) > 0:
        dropped = order[: ia.dip_drop_count(max(betas), n)]
        ax_u.plot(
            dropped,
            np.full(len(dropped), -0.5),
            "v",
            color="red",
            ms=3,
            clip_on=False,
            label=f"dropped at β={max(betas):g}",
        )
        ax_u.legend(loc="lower right", fontsize=7, framealpha=0.8)

    ax_v.plot(np.arange(n), v[order], color="tab:blue", lw=1.2)
    ax_v.set_yscale("log" if (v > 0).all() else "linear")
    colors = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    for k, beta in enumerate(sorted(b for b in betas if b > 0)):
        d = ia.dip_drop_count(beta, n)
        c = colors[k % len(colors)]
        ax_v.axvline(d - 0.5, color=c, ls="--", lw=1, label=f"β={beta:g}: drop {d}")
        ax_v.plot(np.arange(d), v[order[:d]], ".", color=c, ms=4)
    ax_v.set_xlabel("patch rank (ascending column variance)", fontsize=8)
    ax_v.set_ylabel("$v_p$ = Var$_i$ U[i, p]", fontsize=8)
    ax_v.set_title("(b) sorted column variance", fontsize=9)
    ax_v.tick_params(labelsize=7)
    ax_v.grid(alpha=0.3)
    if any(b > 0 for b in betas):
        ax_v.legend(fontsize=7)

    axes = np.asarray(bottom.subplots(1, len(betas), squeeze=False))
    for j, beta in enumerate(betas):
        ax = axes[0, j]
        _image_axes(ax, img, grid)
        d = ia.dip_drop_count(beta, n)
        mask = np.zeros(n)
        mask[order[:d]] = 1.0
        hw = np.ma.masked_where(mask.reshape(grid) == 0, mask.reshape(grid))
        # red, not black: the patches DIP drops are often the (black) background itself
        _overlay(ax, img, hw, cmap="Reds", alpha=0.6, norm=Normalize(0.0, 1.0))
        ax.set_title(f"(c) β={beta:g}: {d} of {n} dropped", fontsize=8)
    _label_outer(axes)
    fig.suptitle("Indiscriminative patches (DIP): U, column variance, dropped patches (red)")
    return fig


# ---------------------------------------------------------------- Fig. 7


def field_figure(image: ArrayLike, field: ArrayLike, grid: Grid) -> Figure:
    """Fig. 7: responsive-field tendency (unit arrows from each patch towards the centre of
    S_p's bounding box, at patch centres) and field size ``|S_p|`` heat map with colourbar.
    field: ``[N, N]`` bool."""
    img = to_hwc(image)
    f = torch.as_tensor(_np(field).astype(bool)).unsqueeze(0)
    size = ia.field_size(f, grid)[0].numpy()
    direction = ia.field_tendency(f, grid).direction[0].numpy()  # [h, w, 2]
    px, py = _patch_px(img, grid)
    h, w = grid
    xs, ys = np.meshgrid((np.arange(w) + 0.5) * px, (np.arange(h) + 0.5) * py)
    side = max(PANEL + 0.6, 0.32 * max(h, w))  # arrows stay readable on large grids
    fig = _new_figure(2, 1, side + 0.2, side)
    ax_t, ax_s = fig.subplots(1, 2)

    _image_axes(ax_t, img, grid, dim=0.8)
    moving = np.abs(direction).sum(-1) > 0
    ax_t.quiver(
        xs[moving],
        ys[moving],
        direction[..., 0][moving],
        direction[..., 1][moving],
        angles="xy",
        scale_units="xy",
        scale=1.0 / (0.42 * min(px, py)),
        color="yellow",
        edgecolor="black",
        linewidth=0.3,
        width=0.005,
        headwidth=3.5,
        headlength=3.5,
        headaxislength=3,
        pivot="tail",
    )
    if (~moving).any():
        ax_t.plot(xs[~moving], ys[~moving], "o", color="yellow", ms=2, ls="none")
    ax_t.set_title("(a) field tendency (to centre of $S_p$)", fontsize=9)

    _image_axes(ax_s, img, grid, grey=True)
    im = _overlay(
        ax_s,
        img,
        size.astype(np.float64),
        cmap="magma",
        alpha=0.75,
        norm=Normalize(0, max(float(size.max()), 1.0)),
    )
    ax_s.set_title("(b) field size $|S_p|$", fontsize=9)
    _colorbar(fig, im, ax_s, "|S_p| (patches)")
    fig.suptitle("Responsive field analysis")
    return fig


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


# ---------------------------------------------------------------- trade-off


def _family(row: Mapping[str, Any]) -> str:
    return str(
        row.get("family") or row.get("module") or row.get("method") or row.get("name") or "?"
    )


def _tag(row: Mapping[str, Any]) -> str:
    parts = []
    for key, sym in (("alpha", "α"), ("beta", "β")):
        val = row.get(key)
        if val is not None and val == val:
            parts.append(f"{sym}={float(val):g}")
    return ", ".join(parts)


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def tradeoff_figure(
    rows: Iterable[Mapping[str, Any]], x: str = "eo", y: str = "top1", log_x: bool = False
) -> Figure:
    """Accuracy vs E_O: one marker per setting, one line per method family (``family`` or
    ``module``; suffixed with img/patch size when the rows mix geometries), each point
    annotated with its alpha / beta. Rows of one setting (seeds) are averaged, with the
    sample std of y as an error bar. rows: dicts with ``module``, ``alpha``, ``beta``,
    ``top1``, ``eo``, ``eo_ratio``; rows whose x or y is missing or NaN are skipped."""
    rows = [
        r
        for r in rows
        if _number(r.get(x)) == _number(r.get(x)) and _number(r.get(y)) == _number(r.get(y))
    ]
    geoms = {(r.get("img_size"), r.get("patch_size")) for r in rows}
    settings: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        fam = _family(r)
        if len(geoms) > 1:
            fam += f" {r.get('img_size')}px/P{r.get('patch_size')}"
        settings.setdefault((fam, _tag(r)), []).append(r)
    fams: dict[str, list[tuple[float, float, float, str]]] = {}
    for (fam, tag), runs in settings.items():
        ys = np.array([_number(r[y]) for r in runs])
        xv = float(np.mean([_number(r[x]) for r in runs]))
        err = float(ys.std(ddof=1)) if len(ys) > 1 else 0.0
        fams.setdefault(fam, []).append((xv, float(ys.mean()), err, tag))
    fig = Figure(figsize=(6.4, 4.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    markers = "osD^vP*X"
    for k, (fam, pts) in enumerate(sorted(fams.items())):
        pts.sort()
        xs, ys, errs, tags = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker=markers[k % len(markers)],
                    ms=6, lw=1.2, capsize=3, label=fam)  # fmt: skip
        for xv, yv, tag in zip(xs, ys, tags, strict=True):
            if tag:
                ax.annotate(tag, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if log_x:
        ax.set_xscale("log")
    names = {"eo": "$E_O$ (attention interactions per image)", "eo_ratio": "$E_O / N^2$"}
    ax.set_xlabel(names.get(x, x))
    seeds = any(len(v) > 1 for v in settings.values())
    ax.set_ylabel(("top-1 accuracy (%)" if y == "top1" else y) + (", mean ± std" if seeds else ""))
    ax.set_title("Accuracy vs attention cost across α and β")
    ax.grid(alpha=0.3)
    if fams:
        ax.legend(fontsize=8, title="method", title_fontsize=8)
    return fig


# ---------------------------------------------------------------- output


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary file + rename). Returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
