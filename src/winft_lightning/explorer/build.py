"""A model and images -> the explorer's packed data: one analysis pass per batch
(:func:`core.analysis.analyze` with every patch's rows, rollout, attention distances, and per
head when asked), packed by :mod:`.pack`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from winft_lightning.core.analysis import DEFAULT_ALPHAS, Analysis, analyze
from winft_lightning.core.interactions import Grid

from .pack import DEFAULT_BETAS, pack_explorer, pack_images

__all__ = ["analyse_for_explorer", "explore"]


def _grid(model: nn.Module, grid: Grid | None) -> Grid:
    return tuple(int(g) for g in (grid or model.patch_embed.grid_size))


def analyse_for_explorer(
    model: nn.Module,
    images: Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    grid: Grid | None = None,
    heads: bool = False,
) -> Analysis:
    """The analysis the explorer shows, on the CPU: U, the windows at ``alphas``, the DIP
    order, every patch's attention row per block (and per head with ``heads``), the rollout
    and the mean attention distances. ``model`` runs in eval mode (restored after)."""
    grid = _grid(model, grid)
    training = model.training
    model.eval()
    try:
        res = analyze(
            model, images, tuple(alphas), grid, patches=range(grid[0] * grid[1]),
            rollout=True, distances=True, heads=heads,
        )  # fmt: skip
    finally:
        model.train(training)
    return res.cpu()


def explore(
    model: nn.Module,
    images: Tensor,
    display: Tensor | None = None,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    betas: Sequence[float] = DEFAULT_BETAS,
    heads: bool = False,
    winft_w: Tensor | None = None,
    names: Sequence[str] | None = None,
    batch_size: int = 4,
    grid: Grid | None = None,
    **page: Any,
) -> dict[str, Any]:
    """The packed explorer (:func:`.pack.pack_explorer`) of ``images [B, 3, H, W]``
    (normalised as ``model`` takes them) in the timm ViT ``model``, analysed ``batch_size``
    images at a time. display: the same images in [0, 1] to draw under the maps (default: each
    image min-max scaled); winft_w ``[B, N, N]``: WinfT's predicted sum of W. ``page``:
    ``title``, ``source``, ``start_alpha``, ``start_beta``."""
    from winft_lightning.figures.base import display_images

    if images.dim() != 4:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    grid = _grid(model, grid)
    shown = (display if display is not None else display_images(images)).detach().cpu()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    entries: list[dict[str, Any]] = []
    names = list(names) if names is not None else [f"image {i}" for i in range(images.shape[0])]
    for start in range(0, images.shape[0], max(1, int(batch_size))):
        stop = start + max(1, int(batch_size))
        res = analyse_for_explorer(model, images[start:stop].to(device), alphas, grid, heads)
        w = None if winft_w is None else winft_w[start:stop].detach().cpu().float()
        entries += pack_images(res, shown[start:stop], w, names[start:stop])
    heads_count = int(getattr(model.blocks[0].attn, "num_heads", 1))
    return pack_explorer(
        entries, grid=grid, alphas=alphas, betas=betas, blocks=len(model.blocks),
        heads=heads_count, patch_size=int(model.patch_embed.patch_size[0]),
        img_size=(int(images.shape[-2]), int(images.shape[-1])), **page,
    )  # fmt: skip
