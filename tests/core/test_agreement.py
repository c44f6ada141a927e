"""Rank agreement of two patch orders (core/agreement.py), held to scipy.stats.spearmanr."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from winft_lightning.core.agreement import order_ranks, spearman_orders


def test_ranks_invert_the_order():
    order = torch.tensor([[2, 0, 1], [0, 1, 2]])
    assert order_ranks(order).tolist() == [[1, 2, 0], [0, 1, 2]]


@pytest.mark.parametrize("n", [2, 5, 16, 196])
def test_spearman_equals_scipy_on_random_orders(n):
    g = torch.Generator().manual_seed(n)
    a = torch.rand(7, n, generator=g).argsort(dim=1)
    b = torch.rand(7, n, generator=g).argsort(dim=1)
    rho = spearman_orders(a, b)
    assert rho.dtype == torch.float64 and rho.shape == (7,)
    ra, rb = order_ranks(a).numpy(), order_ranks(b).numpy()
    want = [stats.spearmanr(ra[i], rb[i]).statistic for i in range(7)]
    np.testing.assert_allclose(rho.numpy(), want, rtol=0, atol=1e-12)


def test_spearman_equals_scipy_on_the_scores_the_orders_sort():
    """Orders from scores without ties (as DIP's and the blank order are built): rho of the
    orders is scipy's rho of the scores themselves."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 16, generator=g, dtype=torch.float64)
    y = x + 0.3 * torch.rand(4, 16, generator=g, dtype=torch.float64)
    rho = spearman_orders(x.argsort(dim=1), y.argsort(dim=1))
    want = [stats.spearmanr(x[i].numpy(), y[i].numpy()).statistic for i in range(4)]
    np.testing.assert_allclose(rho.numpy(), want, rtol=0, atol=1e-12)


def test_same_and_reversed_orders():
    a = torch.rand(3, 9, generator=torch.Generator().manual_seed(1)).argsort(dim=1)
    assert spearman_orders(a, a).tolist() == [1.0] * 3
    np.testing.assert_allclose(spearman_orders(a, a.flip(1)).numpy(), -1.0, atol=1e-12)


@pytest.mark.parametrize(
    "a, b, match",
    [
        (torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 2]]), "permutation"),
        (torch.tensor([[0, 1]]), torch.tensor([[0, 1, 2]]), "shapes"),
        (torch.tensor([[0]]), torch.tensor([[0]]), "N >= 2"),
        (torch.tensor([0, 1]), torch.tensor([0, 1]), r"\[B, N\]"),
    ],
)
def test_bad_orders_are_refused(a, b, match):
    with pytest.raises(ValueError, match=match):
        spearman_orders(a, b)
