"""Shared drawing helpers of the figures: image axes in pixel coordinates, per-patch overlays,
patch marks, colourbars, and :func:`save` (atomic PNG write)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from winft_lightning.core.interactions import Grid

ArrayLike = Tensor | np.ndarray

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


def _log_norm(values: np.ndarray) -> LogNorm:
    pos = values[values > 0]
    vmax = float(pos.max()) if pos.size else 1.0
    vmin = max(float(pos.min()) if pos.size else vmax * 1e-6, vmax * 1e-6)
    return LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10))


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
