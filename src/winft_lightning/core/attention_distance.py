"""Mean attention distance (Dosovitskiy et al. 2021, Fig. 7): how far a head integrates
information; and the references it is read against (uniform attention over the whole grid, or
inside a k x k neighbourhood). Pure tensor functions, batch-first; grid ``(h, w)``, N = h * w
patches row-major, distances between patch centres.

Two conventions (docs/SPEC.md 10a):

- :func:`mean_attention_distance` (ours, the claims columns): in patches, each query's weights
  renormalised over the N patch keys, so a head's value does not depend on how much it gives
  the class token. ``patches x patch_size`` is this convention in pixels.
- :func:`mean_attention_distance_pixels` (Dosovitskiy et al., the probing-vits notebook's
  ``compute_mean_attention_dist``): in pixels, the softmax weights over the patch keys taken as
  they are, so the mass on the prefix tokens adds nothing (a head that attends to CLS reads
  nearer)."""

from __future__ import annotations

import torch
from torch import Tensor

from .claims import grid_distances
from .interactions import Grid, _check_grid

__all__ = [
    "mean_attention_distance",
    "mean_attention_distance_pixels",
    "uniform_attention_distance",
]


def _weighted_distance(attn: Tensor, grid: Grid, num_prefix: int, renormalise: bool) -> Tensor:
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be [B, k, T, T], got {tuple(attn.shape)}")
    n = attn.shape[-1] - num_prefix
    _check_grid(n, grid)
    weights = attn[..., num_prefix:, num_prefix:].to(torch.float64)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    dist = grid_distances(grid, attn.device)  # [N, N]
    return (weights * dist).sum(dim=-1).mean(dim=-1)


def mean_attention_distance(attn: Tensor, grid: Grid, num_prefix: int = 1) -> Tensor:
    """Per image and head, the attention-weighted mean grid distance between each query patch
    and the key patches, averaged over the query patches: ``[B, k]`` float64, in patches.

    attn: one block's softmax map ``[B, k, T, T]``, T = num_prefix + N. The prefix tokens
    (class, distillation, registers) are excluded as queries and as keys; each query's
    weights over the N patch keys are renormalised to sum to 1 (the class token's share is
    not a distance)."""
    return _weighted_distance(attn, grid, num_prefix, renormalise=True)


def mean_attention_distance_pixels(
    attn: Tensor, grid: Grid, patch_size: int, num_prefix: int = 1
) -> Tensor:
    """Dosovitskiy et al.'s convention, as the probing-vits notebook computes it: per image and
    head, ``mean_q sum_j attn[q, j] * patch_size * |p_q - p_j|`` over the patch queries q and
    keys j, ``[B, k]`` float64, in pixels. The weights are the softmax's, not renormalised: the
    share a query gives the prefix tokens counts as distance 0, so this is at most
    ``patch_size x`` :func:`mean_attention_distance` per query."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    return patch_size * _weighted_distance(attn, grid, num_prefix, renormalise=False)


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
