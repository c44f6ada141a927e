"""Mask geometry (SPEC 6): masks live on the analyzed view's patch grid.

Windows are ``[N, 4]`` (or ``[B, N, 4]``) inclusive boxes ``(x_l, y_t, x_r, y_b)`` on a grid
``(h, w)`` with patch index p = y * w + x; DIP orders are ``[N]`` (or ``[B, N]``) patch indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from winft_lightning.core.interactions import Grid
from winft_lightning.data.errors import MaskError

# Augmentations that keep the patch grid (masks move with the image) vs those that do not.
GRID_PRESERVING = ("hflip",)
GRID_BREAKING = ("random_resized_crop", "random_crop", "rotation", "affine", "scale_jitter")


def mirror_index(grid: Grid, device: torch.device | None = None) -> Tensor:
    """``[N]`` long: patch (x, y) -> patch (w-1-x, y), the horizontal mirror of each index."""
    h, w = grid
    p = torch.arange(h * w, device=device)
    return (p // w) * w + (w - 1 - p % w)


def hflip_windows(windows: Tensor, grid: Grid) -> Tensor:
    """Windows of the horizontally flipped image. ``[..., N, 4]`` -> same shape and dtype.

    The patch at (x, y) of the flipped image is the patch at (w-1-x, y) of the original, so
    rows are permuted by the mirror, and each box mirrors x: (x_l, x_r) -> (w-1-x_r, w-1-x_l).
    """
    w = grid[1]
    rows = windows.index_select(-2, mirror_index(grid, windows.device))
    x_l, y_t, x_r, y_b = rows.unbind(-1)
    return torch.stack((w - 1 - x_r, y_t, w - 1 - x_l, y_b), dim=-1).to(windows.dtype)


def hflip_dip_order(order: Tensor, grid: Grid) -> Tensor:
    """DIP order of the flipped image: the same patches in the same rank order, each index
    mirrored. ``[..., N]`` -> same shape and dtype."""
    return mirror_index(grid, order.device)[order.long()].to(order.dtype)


def check_augmentations(use_masks: bool, **augs: Any) -> None:
    """Refuse augmentations that would misalign masks and image (SPEC 6)."""
    if not use_masks:
        return
    bad = [name for name, on in augs.items() if on and name not in GRID_PRESERVING]
    if bad:
        raise MaskError(
            f"augmentation {', '.join(f'{b}={augs[b]}' for b in bad)} does not keep the patch "
            "grid, so the stored masks would no longer match the image; turn it off for runs "
            "that use masks (use_masks=true). Only hflip moves masks with the image."
        )


def check_mask_geometry(
    manifest: Mapping[str, Any],
    *,
    img_size: int | Sequence[int],
    patch_size: int | Sequence[int],
    grid: Sequence[int] | None = None,
    num_patches: int | None = None,
    teacher_sha256: str | None = None,
    **_ignored: Any,
) -> None:
    """Raise :class:`MaskError` unless the mask set in ``manifest`` was built on the same view
    and grid as the model about to use it. Each mismatch names both values. Extra keys (a
    model's ``model_name``, ``num_prefix_tokens``) are accepted and ignored: the student need not
    be the teacher, and prefix tokens are never masked."""
    teacher = manifest.get("teacher")
    root = manifest.get("root", "this shard set")
    if not teacher:
        raise MaskError(
            f"{root} carries no masks (its manifest has no 'teacher' block); run "
            "`python -m winft_lightning.analyze teacher_ckpt=CKPT` first and point the run at its output"
        )

    def first(v: Any) -> int:
        return int(v[0]) if isinstance(v, Sequence) and not isinstance(v, str) else int(v)

    img, patch = first(img_size), first(patch_size)
    want = {"img_size": img, "patch_size": patch, "grid": [img // patch, img // patch]}
    if grid is not None:
        want["grid"] = [int(g) for g in grid]
    if num_patches is not None:
        want["num_patches"] = int(num_patches)
    have = {
        "img_size": int(teacher["img_size"]),
        "patch_size": int(teacher["patch_size"]),
        "grid": [int(g) for g in teacher["grid"]],
        "num_patches": int(teacher["grid"][0]) * int(teacher["grid"][1]),
    }
    bad = [f"{k}: model {want[k]} vs masks {have[k]}" for k in want if want[k] != have[k]]
    if teacher_sha256 is not None and teacher_sha256 != teacher.get("sha256"):
        bad.append(f"teacher sha256: run {teacher_sha256[:12]} vs masks {teacher['sha256'][:12]}")
    if bad:
        raise MaskError(
            f"mask set {root} (teacher {teacher.get('model_name')}, "
            f"{have['img_size']}px / patch {have['patch_size']}) does not fit the model: "
            + "; ".join(bad)
            + ". Re-run analyze for this geometry or use a model with the mask set's geometry."
        )
