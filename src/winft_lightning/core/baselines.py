"""SPEC 9's chance levels and baselines: the random-U null, C1's locality index, and the patch
orderings C3's DIP is held against. Pure tensor functions, batch-first, shapes as in
:mod:`.interactions` (B images, grid ``(h, w)``, N patches row-major). Random draws take a
``torch.Generator``, never global state."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from .claims import grid_distances, random_hits
from .interactions import Grid, _check_grid, dip_keep, off_diagonal

__all__ = [
    "ascending_order",
    "blank_scores",
    "drop_highest",
    "drop_lowest",
    "hit_distance",
    "key_seed",
    "locality_index",
    "nearest_distances",
    "random_order",
    "random_u_hits",
    "row_mean_distances",
    "tie_permutations",
]


def random_u_hits(hits: Tensor, generator: torch.Generator) -> Tensor:
    """SPEC 9's random U' ``[B, N, N]`` bool: per image and row p, as many entries of row p
    minus p as U' (``hits``, ``[B, N, N]`` bool) holds there (|H_p|, the diagonal not
    counted), drawn uniformly without replacement. The diagonal of the result is False;
    windows and fields are then built from it as from the real U' (``windows_from_hits``)."""
    return random_hits(off_diagonal(hits).sum(dim=-1), generator)


def row_mean_distances(grid: Grid, device: torch.device | None = None) -> Tensor:
    """r_p of SPEC 9: the exact mean grid distance from p to the N - 1 other patches, ``[N]``
    float64 (the expected d_p of uniformly drawn hits)."""
    n = grid[0] * grid[1]
    if n < 2:
        raise ValueError(f"a {grid} grid has no patch besides p")
    return grid_distances(grid, device).sum(dim=1) / (n - 1)


def nearest_distances(counts: Tensor, grid: Grid) -> Tensor:
    """n_p of SPEC 9: the mean grid distance from p to its ``counts[b, p]`` nearest other
    patches (ties by patch index), ``[B, N]`` float64; NaN where the count is 0."""
    n = grid[0] * grid[1]
    _check_grid(counts.shape[-1], grid)
    if counts.numel() and not 0 <= int(counts.min()) <= int(counts.max()) <= n - 1:
        raise ValueError(f"counts must lie in 0..{n - 1} (row p minus p)")
    dist = grid_distances(grid, counts.device)
    ordered = torch.sort(dist, dim=1, stable=True).values  # p itself (0) first, then by distance
    # prefix means of the N - 1 nearest others, with a leading 0 so that index 0 = no hit
    cum = torch.cat((torch.zeros(n, 1, dtype=dist.dtype, device=dist.device),
                     ordered[:, 1:].cumsum(dim=1)), dim=1)  # fmt: skip
    c = counts.long()
    total = cum.expand(c.shape[0], n, n).gather(2, c.unsqueeze(-1)).squeeze(-1)
    return total / c  # 0 / 0 = NaN where there is no hit


def locality_index(hits: Tensor, grid: Grid) -> Tensor:
    """C1's locality index per image (SPEC 9), ``[B]`` float64:
    ``L = sum_p (r_p - d_p) / sum_p (r_p - n_p)`` over the patches with |H_p| >= 1, H_p = the
    entries of row p of U' (``hits`` ``[B, N, N]`` bool) other than p, d_p their mean distance
    to p. 0: as local as chance, 1: as local as the |H_p| nearest patches. NaN for an image
    with no such patch, or whose hits cover every row (the denominator is 0)."""
    n = hits.shape[-1]
    _check_grid(n, grid)
    off = off_diagonal(hits)
    count = off.sum(dim=-1)
    dist = grid_distances(grid, hits.device)
    valid = count >= 1
    d = (off * dist).sum(dim=-1) / count.clamp_min(1)
    r = row_mean_distances(grid, hits.device).expand_as(d)
    near = torch.nan_to_num(nearest_distances(count, grid))
    num = torch.where(valid, r - d, 0.0).sum(dim=1)
    den = torch.where(valid, r - near, 0.0).sum(dim=1)
    return torch.where(den > 1e-12, num / den, float("nan"))


def hit_distance(hits: Tensor, grid: Grid) -> Tensor:
    """Mean over the patches with |H_p| >= 1 of d_p, the mean grid distance from p to the
    entries of row p of U' (``hits`` ``[B, N, N]`` bool) other than p: ``[B]`` float64, NaN
    for an image with no such patch. U's counterpart of a head's mean attention distance."""
    n = hits.shape[-1]
    _check_grid(n, grid)
    off = off_diagonal(hits)
    count = off.sum(dim=-1)
    d = (off * grid_distances(grid, hits.device)).sum(dim=-1) / count.clamp_min(1)
    valid = count >= 1
    return torch.where(valid, d, 0.0).sum(dim=1) / valid.sum(dim=1)


def blank_scores(images01: Tensor, grid: Grid) -> Tensor:
    """C3's *blank* baseline score: the standard deviation of each patch's pixels (all
    channels, analyzed view ``[B, C, H, W]`` in 0..1), ``[B, N]`` float64; the lowest are the
    blankest."""
    b, c, height, width = images01.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"a {height}x{width} image does not split into a {h}x{w} grid")
    cells = images01.to(torch.float64).reshape(b, c, h, height // h, w, width // w)
    cells = cells.permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, -1)
    return cells.std(dim=-1, unbiased=False)


def key_seed(key: str, seed: int = 0, what: str = "c3/ties") -> int:
    """A 63-bit seed from an image ``key`` (and the pass's ``seed``, and what it draws): the
    same on every rerun, batching and device, another one for another image."""
    digest = hashlib.sha256(f"winft-{what}/{int(seed)}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def tie_permutations(seeds: Sequence[int], n: int, device: torch.device | None = None) -> Tensor:
    """Per image a uniform random permutation of the N patches from a CPU generator seeded by
    its own seed (e.g. :func:`key_seed` of its key), ``[len(seeds), N]`` long on ``device``:
    the order in which :func:`ascending_order` breaks that image's ties."""
    rows = [torch.randperm(n, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device) if rows else torch.empty(0, n, dtype=torch.long)


def ascending_order(scores: Tensor, ties: Tensor | None = None) -> Tensor:
    """Patches by ascending score, ``[B, N]`` long: the order every C3 baseline drops from.
    Patches of equal score (blank patches all score 0) come in the order of ``ties``
    (``[B, N]``, a permutation per image: :func:`tie_permutations`, SPEC 10), or by patch
    index when ``ties`` is None (a stable sort, as ``interactions.dip_order`` for DIP's own
    order, which keeps SPEC 3's index rule)."""
    if ties is None:
        return torch.sort(scores, dim=1, stable=True).indices
    if ties.shape != scores.shape:
        raise ValueError(f"ties {tuple(ties.shape)} vs scores {tuple(scores.shape)}")
    ties = ties.to(scores.device)
    ranked = torch.sort(scores.gather(1, ties), dim=1, stable=True).indices
    return ties.gather(1, ranked)


def random_order(batch: int, n: int, generator: torch.Generator) -> Tensor:
    """A uniform random order of the N patches per image, ``[batch, N]`` long (on the
    generator's device)."""
    keys = torch.rand(batch, n, generator=generator, device=generator.device)
    return keys.argsort(dim=1)


def drop_lowest(order: Tensor, beta: float) -> Tensor:
    """Keep mask ``[B, N]`` bool without the floor(beta N) *first* patches of ``order``
    (negative perturbation: the least relevant first); DIP's own ``interactions.dip_keep``."""
    return dip_keep(order, beta)


def drop_highest(order: Tensor, beta: float) -> Tensor:
    """Keep mask ``[B, N]`` bool without the floor(beta N) *last* patches of ``order``
    (positive perturbation: the most relevant first): DIP's rule on the reversed order."""
    return dip_keep(order.flip(1), beta)
