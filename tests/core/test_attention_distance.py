"""Mean attention distance (core/attention_distance.py) against analytic values and a naive
loop."""

from __future__ import annotations

import math

import pytest
import torch

from winft_lightning.core.attention_distance import (
    mean_attention_distance,
    mean_attention_distance_pixels,
    uniform_attention_distance,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_prefix(patch_attn: torch.Tensor, prefix: int, share: float = 0.3) -> torch.Tensor:
    """A [B, k, T, T] map whose patch rows give ``share`` to the prefix tokens and the rest in
    the proportions of ``patch_attn`` [B, k, N, N]."""
    b, k, n, _ = patch_attn.shape
    t = prefix + n
    full = torch.full((b, k, t, t), 1.0 / t, dtype=torch.float64)
    rows = patch_attn / patch_attn.sum(dim=-1, keepdim=True)
    full[:, :, prefix:, :prefix] = share / prefix
    full[:, :, prefix:, prefix:] = (1 - share) * rows
    return full


def test_self_attention_has_distance_zero_and_uniform_the_reference():
    grid = (3, 5)
    n = 15
    eye = torch.eye(n, dtype=torch.float64).expand(2, 3, n, n)
    assert torch.equal(mean_attention_distance(with_prefix(eye, 1), grid), torch.zeros(2, 3))
    uniform = torch.ones(1, 2, n, n, dtype=torch.float64)
    got = mean_attention_distance(with_prefix(uniform, 2, share=0.6), grid, num_prefix=2)
    assert got[0].tolist() == pytest.approx([uniform_attention_distance(grid)] * 2, abs=1e-12)


@pytest.mark.parametrize("n", [2, 7, 14])
def test_uniform_on_a_line_is_the_closed_form(n):
    # mean |i - j| over all ordered pairs of 0..n-1: (n^2 - 1) / (3 n)
    assert uniform_attention_distance((1, n)) == pytest.approx((n * n - 1) / (3 * n))


def test_neighbourhoods():
    grid = (14, 14)
    assert uniform_attention_distance(grid, 1) == 0.0
    assert uniform_attention_distance(grid, 27) == pytest.approx(uniform_attention_distance(grid))
    # an interior query of a 3x3 neighbourhood: 4 neighbours at 1, 4 at sqrt 2, itself at 0
    interior = (4 + 4 * math.sqrt(2)) / 9
    assert uniform_attention_distance((3, 3), 3) < interior  # border queries see fewer
    # edges see 6 cells (3 at 1, 2 at sqrt 2), corners 4 (2 at 1, 1 at sqrt 2)
    edge, corner = (3 + 2 * math.sqrt(2)) / 6, (2 + math.sqrt(2)) / 4
    assert uniform_attention_distance((3, 3), 3) == pytest.approx(
        (interior + 4 * edge + 4 * corner) / 9
    )
    levels = [uniform_attention_distance(grid, k) for k in (3, 5, 7)]
    assert levels == sorted(levels) and levels[-1] < uniform_attention_distance(grid)
    with pytest.raises(ValueError, match="odd"):
        uniform_attention_distance(grid, 4)
    # the same neighbourhood written out as an attention map
    n = 196
    p = torch.arange(n)
    x, y = p % 14, p // 14
    box = ((x[:, None] - x[None]).abs() <= 2) & ((y[:, None] - y[None]).abs() <= 2)
    got = mean_attention_distance(with_prefix(box.double()[None, None], 1), grid)
    assert got.item() == pytest.approx(uniform_attention_distance(grid, 5), abs=1e-12)


@pytest.mark.parametrize("prefix", [1, 2, 5])
def test_matches_a_naive_loop(prefix):
    g = torch.Generator().manual_seed(prefix)
    grid = (3, 4)
    n, t = 12, 12 + prefix
    attn = torch.softmax(torch.randn(2, 3, t, t, generator=g, dtype=torch.float64) * 3, dim=-1)
    got = mean_attention_distance(attn, grid, num_prefix=prefix)
    for b in range(2):
        for h in range(3):
            total = 0.0
            for q in range(n):
                row = attn[b, h, prefix + q, prefix:]
                weights = row / row.sum()
                qx, qy = q % 4, q // 4
                total += sum(float(weights[j]) * math.hypot(j % 4 - qx, j // 4 - qy)
                             for j in range(n))  # fmt: skip
            assert got[b, h].item() == pytest.approx(total / n, abs=1e-12)
    with pytest.raises(ValueError, match="grid"):
        mean_attention_distance(attn, (5, 5), num_prefix=prefix)


@pytest.mark.parametrize("prefix", [1, 2])
def test_pixels_match_the_probing_vits_loop(prefix):
    # compute_mean_attention_dist of the probing-vits notebook, written out: the patch block of
    # the softmax map as it is (not renormalised), distance patch_size * |p_i - p_j|
    g = torch.Generator().manual_seed(10 + prefix)
    grid, size = (3, 4), 8
    n, t = 12, 12 + prefix
    attn = torch.softmax(torch.randn(2, 3, t, t, generator=g, dtype=torch.float64) * 3, dim=-1)
    got = mean_attention_distance_pixels(attn, grid, size, num_prefix=prefix)
    for b in range(2):
        for h in range(3):
            total = 0.0
            for i in range(n):
                for j in range(n):
                    d = size * math.hypot(i % 4 - j % 4, i // 4 - j // 4)
                    total += float(attn[b, h, prefix + i, prefix + j]) * d
            assert got[b, h].item() == pytest.approx(total / n, abs=1e-12)
    with pytest.raises(ValueError, match="patch_size"):
        mean_attention_distance_pixels(attn, grid, 0, num_prefix=prefix)


def test_the_two_conventions_differ_by_the_class_tokens_share():
    # every patch row gives 0.3 to the prefix: pixels = (1 - 0.3) * patch_size * patches
    g = torch.Generator().manual_seed(3)
    patch = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    attn = with_prefix(patch, 1, share=0.3)
    ours = mean_attention_distance(attn, (4, 4))
    theirs = mean_attention_distance_pixels(attn, (4, 4), 16)
    assert torch.allclose(theirs, 0.7 * 16 * ours, atol=1e-12)
    # no mass on the prefix: the same number in two units
    none = with_prefix(patch, 1, share=0.0)
    assert torch.allclose(mean_attention_distance_pixels(none, (4, 4), 16),
                          16 * mean_attention_distance(none, (4, 4)), atol=1e-12)  # fmt: skip


def test_a_real_vits_heads_read_nearer_without_renormalising():
    from helpers import tiny_vit
    from winft_lightning.core.capture import iter_block_attention

    model = tiny_vit(img_size=32, patch_size=4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for attn in iter_block_attention(model, x, patches_only=False):
            ours = 4 * mean_attention_distance(attn, (8, 8))
            theirs = mean_attention_distance_pixels(attn, (8, 8), 4)
            assert (theirs <= ours + 1e-9).all()  # the class token's share reads as 0
            cls_share = attn[:, :, 1:, 0].double().mean(dim=-1)  # a query's mass on CLS
            assert (theirs < ours).all() == bool((cls_share > 0).all())


def test_analyze_keeps_every_blocks_distance_and_u_hits_have_theirs():
    from helpers import tiny_vit
    from winft_lightning.core.analysis import analyze
    from winft_lightning.core.baselines import hit_distance
    from winft_lightning.core.capture import iter_block_attention
    from winft_lightning.core.claims import grid_distances

    torch.manual_seed(0)
    model = tiny_vit().eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        res = analyze(model, x, (0.1,), rollout=False, distances=True)
        maps = list(iter_block_attention(model, x, patches_only=False))
    want = torch.stack([mean_attention_distance(a, (4, 4)) for a in maps], dim=1)
    assert res.attention_distance.shape == (3, len(maps), maps[0].shape[1])
    assert torch.allclose(res.attention_distance, want)
    assert res.rollout is None and res.u is not None  # distances need no rollout
    hits = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1)) < 0.2
    dist = grid_distances((4, 4))
    for b in range(2):
        ds = [float(dist[p][hits[b, p] & (torch.arange(16) != p)].mean())
              for p in range(16) if (hits[b, p] & (torch.arange(16) != p)).any()]  # fmt: skip
        assert hit_distance(hits, (4, 4))[b].item() == pytest.approx(sum(ds) / len(ds))
