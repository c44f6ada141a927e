"""The analysis core held to a naive, loop-by-loop re-derivation of SPEC.md 1-4."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch

from naive import naive_dip_order, naive_field, naive_mask, naive_rollout, naive_u, naive_windows
from winft_lightning.core import interactions as ia

GRIDS = [(3, 4), (4, 4), (2, 5), (5, 3)]


def random_attention(l, b, k, n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, k, n, n, generator=g, dtype=dtype).mul(2).softmax(-1) for _ in range(l)]


# ---- SPEC 1 ----


@pytest.mark.parametrize(("l", "k", "grid"), [(1, 1, (2, 2)), (3, 2, (3, 4)), (5, 3, (2, 5))])
def test_uncertainty_map_matches_naive_float64(l, k, grid):
    n = grid[0] * grid[1]
    maps = random_attention(l, 2, k, n, seed=l * 10 + k)
    torch.testing.assert_close(ia.uncertainty_map(maps), naive_u(maps), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(("l", "k", "n"), [(5, 3, 12), (12, 12, 49), (12, 12, 196)])
def test_uncertainty_map_float32_within_1e6_of_naive(l, k, n):
    maps = random_attention(l, 2, k, n, seed=n, dtype=torch.float32)
    u = ia.uncertainty_map(maps)
    assert u.dtype == torch.float32 and u.shape == (2, n, n)
    # vectorised float64 form of the same formula (the loop reference is too slow at N=196)
    a = torch.stack([m.double() for m in maps])
    ucal = ((a - a.mean(0)) ** 2).mean(0)
    ref = ((ucal - ucal.mean(1, keepdim=True)) ** 2).mean(1)
    assert ((u.double() - ref).abs().max() / ref.abs().max()).item() < 1e-6


def test_uncertainty_map_streams_one_block_at_a_time():
    alive = []

    def blocks():
        for seed in range(6):
            a = random_attention(1, 1, 2, 9, seed=seed)[0]
            alive.append(weakref.ref(a))
            yield a
            del a
            gc.collect()
            # the consumer may still hold the block it is processing; older ones must be gone
            assert sum(r() is not None for r in alive[:-1]) == 0

    u = ia.uncertainty_map(blocks())
    assert u.shape == (1, 9, 9)


def test_uncertainty_map_input_errors():
    with pytest.raises(ValueError, match="at least one block"):
        ia.uncertainty_map([])
    with pytest.raises(ValueError, match=r"\[B, k, N, N\]"):
        ia.uncertainty_map([torch.rand(2, 3, 4)])
    with pytest.raises(ValueError, match="block 1"):
        ia.uncertainty_map([torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4)])


def test_uncertainty_map_low_precision_inputs():
    maps = random_attention(4, 1, 2, 16, seed=7, dtype=torch.float32)
    ref = ia.uncertainty_map(maps)
    for dtype in (torch.float16, torch.bfloat16):
        u = ia.uncertainty_map([m.to(dtype) for m in maps])
        assert u.dtype == torch.float32
        assert torch.corrcoef(torch.stack([u.flatten(), ref.flatten()]))[0, 1] > 0.99


# ---- SPEC 2 ----


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.2, 0.5, 1.0])
def test_awd_windows_match_naive(grid, alpha):
    n = grid[0] * grid[1]
    u = ia.uncertainty_map(random_attention(3, 3, 2, n, seed=n))
    got = ia.awd_windows(u, alpha, grid)
    assert got.dtype == torch.long and got.shape == (3, n, 4)
    assert torch.equal(got, naive_windows(u, alpha, grid))


def test_awd_windows_ties_broken_by_flat_index():
    grid = (3, 3)
    u = torch.zeros(2, 9, 9)  # every entry tied
    u[1, 8, 0] = 1.0  # one strict winner, then ties
    for alpha in (0.02, 0.05, 0.3):
        assert torch.equal(ia.awd_windows(u, alpha, grid), naive_windows(u, alpha, grid))


@pytest.mark.parametrize("grid", GRIDS)
def test_alpha_one_gives_full_attention(grid):
    n = grid[0] * grid[1]
    u = ia.uncertainty_map(random_attention(2, 2, 2, n, seed=1))
    mask = ia.windows_to_mask(ia.awd_windows(u, 1.0, grid), grid)
    assert ia.interaction_count(mask).tolist() == [n * n, n * n]


def test_row_whose_only_hit_is_itself_gets_1x1_window():
    grid = (3, 4)
    n = 12
    u = torch.rand(2, n, n) * 0.1
    u = u + torch.eye(n)  # the N largest entries are the diagonal
    alpha = n / n**2
    assert ia.top_count(alpha, n) == n
    windows = ia.awd_windows(u, alpha, grid)
    p = torch.arange(n)
    expected = torch.stack((p % 4, p // 4, p % 4, p // 4), -1).expand(2, n, 4)
    assert torch.equal(windows, expected)
    assert ia.interaction_count(ia.windows_to_mask(windows, grid)).tolist() == [n, n]


@pytest.mark.parametrize("grid", GRIDS)
def test_windows_to_mask_matches_naive_and_diagonal_true(grid):
    n = grid[0] * grid[1]
    u = ia.uncertainty_map(random_attention(3, 2, 2, n, seed=5))
    for alpha in (0.02, 0.1, 0.4):
        windows = ia.awd_windows(u, alpha, grid)
        mask = ia.windows_to_mask(windows, grid)
        assert torch.equal(mask, naive_mask(windows, grid))
        assert mask.diagonal(dim1=1, dim2=2).all()
        assert torch.equal(ia.interaction_count(mask), ia.window_areas(windows).sum(1))


def test_top_count_rounds_half_up_and_validates():
    assert ia.top_count(0.1, 196) == 3842  # 3841.6 -> 3842
    assert ia.top_count(0.5, 3) == 5  # 4.5 rounds up
    assert ia.top_count(1e-9, 4) == 1  # never below one
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            ia.top_count(bad, 10)


def test_grid_mismatch_is_refused():
    u = torch.rand(1, 12, 12)
    with pytest.raises(ValueError, match=r"grid \(4, 4\)"):
        ia.awd_windows(u, 0.1, (4, 4))


# ---- SPEC 3 ----


@pytest.mark.parametrize("grid", GRIDS)
def test_dip_order_matches_naive(grid):
    n = grid[0] * grid[1]
    u = ia.uncertainty_map(random_attention(3, 3, 3, n, seed=n + 1))
    assert torch.equal(ia.dip_order(u), naive_dip_order(u))


def test_dip_keep_counts_and_beta_zero():
    order = torch.stack([torch.randperm(20) for _ in range(3)])
    assert ia.dip_keep(order, 0.0).all()
    keep = ia.dip_keep(order, 0.25)
    assert keep.sum(1).tolist() == [15, 15, 15]
    for b in range(3):
        assert not keep[b, order[b, :5]].any() and keep[b, order[b, 5:]].all()
    assert ia.dip_drop_count(0.29, 100) == 29  # the decimal the user wrote, not 28.999...
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="beta"):
            ia.dip_keep(order, bad)


# ---- SPEC 4 ----


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5])
def test_responsive_field_matches_naive(grid, beta):
    n = grid[0] * grid[1]
    u = ia.uncertainty_map(random_attention(3, 2, 2, n, seed=n + 2))
    windows = ia.awd_windows(u, 0.1, grid)
    order = ia.dip_order(u)
    field = ia.responsive_field(windows, order, beta, grid)
    assert torch.equal(field, naive_field(windows, order, beta, grid))
    assert field.diagonal(dim1=1, dim2=2).all()
    if beta == 0.0:
        assert torch.equal(field, ia.windows_to_mask(windows, grid))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 0.9])
def test_field_size_from_windows_equals_the_fields_count(grid, beta):
    """AWD+DIP's E_O without the [B, N, N] field: held to the field's own rows, p included
    where DIP drops it."""
    n = grid[0] * grid[1]
    u = ia.uncertainty_map(random_attention(3, 2, 2, n, seed=n + 5))
    windows, order = ia.awd_windows(u, 0.2, grid), ia.dip_order(u)
    keep = ia.dip_keep(order, beta)
    got = ia.field_size_from_windows(windows, keep, grid)
    field = ia.responsive_field(windows, order, beta, grid)
    assert torch.equal(got, field.sum(dim=-1))
    assert torch.equal(got.sum(dim=1), ia.interaction_count(field))


@pytest.mark.parametrize("grid", GRIDS)
def test_field_size_and_tendency_match_naive(grid):
    h, w = grid
    n = h * w
    u = ia.uncertainty_map(random_attention(3, 2, 2, n, seed=n + 3))
    field = ia.responsive_field(ia.awd_windows(u, 0.15, grid), ia.dip_order(u), 0.2, grid)
    size = ia.field_size(field, grid)
    tend = ia.field_tendency(field, grid)
    assert size.shape == (2, h, w) and tend.extent.shape == (2, h, w, 2)
    for b in range(2):
        for p in range(n):
            members = [i for i in range(n) if field[b, p, i]]
            assert size[b, p // w, p % w] == len(members)
            xs = [i % w for i in members]
            ys = [i // w for i in members]
            assert tend.extent[b, p // w, p % w].tolist() == [
                max(xs) - min(xs),
                max(ys) - min(ys),
            ]
            dx = (min(xs) + max(xs)) / 2 - p % w
            dy = (min(ys) + max(ys)) / 2 - p // w
            norm = math.hypot(dx, dy)
            want = [dx / norm, dy / norm] if norm > 0 else [0.0, 0.0]
            got = tend.direction[b, p // w, p % w].tolist()
            assert got == pytest.approx(want, abs=1e-6)


# ---- attention rollout (Abnar & Zuidema 2020), the figures' relevance map ----


@pytest.mark.parametrize("prefix", [1, 3])
def test_rollout_matches_naive_loop(prefix):
    n = 16
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(2, 3, prefix + n, prefix + n, generator=g).softmax(-1) for _ in range(4)]
    got = ia.attention_rollout(iter(maps), num_prefix=prefix)
    assert got.shape == (2, n)
    torch.testing.assert_close(got.double(), naive_rollout(maps, prefix), rtol=1e-5, atol=1e-7)
    # the full CLS row of the product is a distribution; the patch part is less than all of it
    assert (got.sum(-1) < 1).all() and (got > 0).all()
    with pytest.raises(ValueError):
        ia.attention_rollout(iter([]))
    with pytest.raises(ValueError, match=r"\[B, k, T, T\]"):
        ia.rollout_step(None, torch.rand(2, 3, 4))


@pytest.mark.parametrize("grid", GRIDS[:2])
def test_column_variance_matches_naive(grid):
    n = grid[0] * grid[1]
    u = ia.uncertainty_map(random_attention(2, 2, 2, n, seed=n + 7))
    v = ia.column_variance(u)
    for b in range(2):
        for p in range(n):
            col = [float(u[b, i, p]) for i in range(n)]
            m = sum(col) / n
            assert float(v[b, p]) == pytest.approx(sum((c - m) ** 2 for c in col) / n, rel=1e-9)
    assert torch.equal(ia.dip_order(u), torch.sort(v, dim=1, stable=True).indices)
