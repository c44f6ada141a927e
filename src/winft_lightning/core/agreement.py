"""How two orderings of the N patches agree: the Spearman rank correlation per image, e.g.
DIP's order (ascending column variance of U) against the blank order (ascending pixel std),
SPEC.md 10's randomisation null. Pure tensor functions, batch-first."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["order_ranks", "spearman_orders"]


def order_ranks(order: Tensor) -> Tensor:
    """The rank of each patch in ``order`` (``[B, N]`` long, a permutation of 0..N-1 per
    image, the first entry ranked 0): ``[B, N]`` long with ``ranks[b, order[b, i]] = i``."""
    if order.ndim != 2:
        raise ValueError(f"an order is [B, N], got shape {tuple(order.shape)}")
    b, n = order.shape
    ranks = torch.full_like(order, -1)
    ranks.scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
    if n and (ranks < 0).any():
        raise ValueError("each row of an order must be a permutation of 0..N-1")
    return ranks


def spearman_orders(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rho per image between two orders of the same N patches (``[B, N]`` long
    each, permutations): ``[B]`` float64, 1 - 6 sum d^2 / (N (N^2 - 1)) with d a patch's
    difference in rank (orders have no ties). +1: the same order, -1: reversed, about 0: no
    relation."""
    if a.shape != b.shape:
        raise ValueError(f"orders of different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    ra, rb = order_ranks(a), order_ranks(b.to(a.device))
    n = a.shape[1]
    if n < 2:
        raise ValueError(f"a rank correlation needs N >= 2 patches, got {n}")
    d = (ra - rb).to(torch.float64)
    return 1.0 - 6.0 * (d * d).sum(dim=1) / (n * (n * n - 1.0))
