"""Figures of windows and responsive fields (Fig. 4, 7, 10): AWD windows, field tendency and
size, ground-truth responsive fields beside WinfT's predicted W."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from winft_lightning.core import interactions as ia
from winft_lightning.figures.base import (
    PANEL,
    ArrayLike,
    Grid,
    _colorbar,
    _image_axes,
    _label_outer,
    _mark_patch,
    _new_figure,
    _np,
    _overlay,
    _patch_px,
    _patch_title,
    _to_hw,
    to_hwc,
)

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
