"""Mean attention distance (Dosovitskiy et al. 2021, Fig. 7): how far, in patches, a head
integrates information; and the references it is read against (uniform attention over the
whole grid, or inside a k x k neighbourhood). Pure tensor functions, batch-first; grid
``(h, w)``, N = h * w patches row-major, distances in grid units (patch centres)."""

from __future__ import annotations

import torch
from torch import Tensor

from .claims import grid_distances
from .interactions import Grid, _check_grid

__all__ = ["mean_attention_distance", "uniform_attention_distance"]


def mean_attention_distance(attn: Tensor, grid: Grid, num_prefix: int = 1) -> Tensor:
    """Per image and head, the attention-weighted mean grid distance between each query patch
    and the key patches, averaged over the query patches: ``[B, k]`` float64.

    attn: one block's softmax map ``[B, k, T, T]``, T = num_prefix + N. The prefix tokens
    (class, distillation, registers) are excluded as queries and as keys; each query's
    weights over the N patch keys are renormalised to sum to 1 (the class token's share is
    not a distance)."""
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be [B, k, T, T], got {tuple(attn.shape)}")
    n = attn.shape[-1] - num_prefix
    _check_grid(n, grid)
    weights = attn[..., num_prefix:, num_prefix:].to(torch.float64)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    dist = grid_distances(grid, attn.device)  # [N, N]
    return (weights * dist).sum(dim=-1).mean(dim=-1)


def uniform_attention_distance(grid: Grid, size: int | None = None) -> float:
    """The mean attention distance of uniform attention: over all N patches (``size`` None:
    the level of a head blind to position, the reference a profile is given as a fraction of;
    a head that favours far patches can exceed it), or over the patches within a ``size`` x
    ``size`` neighbourhood centred on the query (odd ``size``, clipped at the grid's border;
    the query itself included, as attention includes it)."""
    n = grid[0] * grid[1]
    dist = grid_distances(grid)
    if size is None:
        return float(dist.mean())
    if size < 1 or size % 2 == 0:
        raise ValueError(f"a neighbourhood needs an odd size >= 1, got {size}")
    p = torch.arange(n)
    x, y = p % grid[1], p // grid[1]
    inside = ((x[:, None] - x[None]).abs() <= size // 2) & (
        (y[:, None] - y[None]).abs() <= size // 2
    )
    return float(((dist * inside).sum(dim=1) / inside.sum(dim=1)).mean())
