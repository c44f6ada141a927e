"""SPEC.md 9 (baselines.py and claims.py's margin rule) on planted data whose answer is known:
the random-U null and C1's locality index held to naive loops, the C1b object-position
confound that the random-U null removes, the margin rule and the MDE against a simulated power
run, and C3's baseline orderings (blank, random, rollout, cls-attention) against per-image
loops, the last two through a real tiny timm ViT."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from helpers import tiny_vit
from winft_lightning.core import baselines as BL
from winft_lightning.core import claims as C
from winft_lightning.core import interactions as ia
from winft_lightning.core.analysis import analyze

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("baselines")]

GRIDS = [(3, 4), (5, 5), (2, 5), (4, 3)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_hit_sets(b: int, grid, seed: int = 0) -> torch.Tensor:
    """[B, N, N] bool with a different density per image (diagonal entries included)."""
    n = grid[0] * grid[1]
    g = gen(seed)
    density = torch.rand(b, 1, 1, generator=g, dtype=torch.float64) * 0.6
    return torch.rand(b, n, n, generator=g, dtype=torch.float64) < density


# ---- naive references ----


def sq_dist(p: int, i: int, w: int) -> int:
    return (p % w - i % w) ** 2 + (p // w - i // w) ** 2


def naive_row_mean(grid) -> list[float]:
    _, w = grid
    n = grid[0] * grid[1]
    return [
        sum(math.sqrt(sq_dist(p, i, w)) for i in range(n) if i != p) / (n - 1) for p in range(n)
    ]


def naive_nearest(count: int, p: int, grid) -> float:
    """Mean distance from p to its ``count`` nearest other patches, ties by patch index."""
    _, w = grid
    n = grid[0] * grid[1]
    others = sorted((i for i in range(n) if i != p), key=lambda i: (sq_dist(p, i, w), i))
    if count == 0:
        return math.nan
    return sum(math.sqrt(sq_dist(p, i, w)) for i in others[:count]) / count


def naive_locality(hits: torch.Tensor, grid) -> list[float]:
    _, w = grid
    b, n, _ = hits.shape
    r = naive_row_mean(grid)
    out = []
    for bi in range(b):
        num = den = 0.0
        for p in range(n):
            members = [i for i in range(n) if i != p and bool(hits[bi, p, i])]
            if not members:
                continue
            d = sum(math.sqrt(sq_dist(p, i, w)) for i in members) / len(members)
            num += r[p] - d
            den += r[p] - naive_nearest(len(members), p, grid)
        out.append(num / den if den > 1e-12 else math.nan)
    return out


# ---- C1: the locality index ----


@pytest.mark.parametrize("grid", GRIDS)
def test_row_mean_distances_match_a_loop(grid):
    got = BL.row_mean_distances(grid)
    assert got.dtype == torch.float64 and got.shape == (grid[0] * grid[1],)
    torch.testing.assert_close(got, torch.tensor(naive_row_mean(grid), dtype=torch.float64))


def test_row_mean_distances_need_two_patches():
    with pytest.raises(ValueError, match="no patch"):
        BL.row_mean_distances((1, 1))


@pytest.mark.parametrize("grid", GRIDS)
def test_nearest_distances_match_a_loop(grid):
    n = grid[0] * grid[1]
    counts = torch.randint(0, n, (4, n), generator=gen(n))
    counts[0, :3] = torch.tensor([0, 1, n - 1])  # none, one, every other patch
    got = BL.nearest_distances(counts, grid)
    want = torch.tensor(
        [[naive_nearest(int(counts[b, p]), p, grid) for p in range(n)] for b in range(4)],
        dtype=torch.float64,
    )
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, equal_nan=True)
    assert torch.equal(got.isnan(), counts == 0)
    # all N - 1 others: the nearest ones are the whole row, n_p = r_p
    torch.testing.assert_close(got[0, 2], BL.row_mean_distances(grid)[2])


@pytest.mark.parametrize("grid", GRIDS)
def test_locality_index_matches_a_loop(grid):
    n = grid[0] * grid[1]
    hits = random_hit_sets(6, grid, seed=n)
    hits[0] = False  # no hit at all: NaN
    hits[1] = torch.eye(n, dtype=torch.bool)  # only the diagonal, which does not count: NaN
    hits[2] = True  # every row covers the grid: r_p = n_p, the denominator is 0: NaN
    hits[3, 1:] = False  # one row only
    got = BL.locality_index(hits, grid)
    want = torch.tensor(naive_locality(hits, grid), dtype=torch.float64)
    assert got.dtype == torch.float64 and got.shape == (6,)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert got[:3].isnan().all() and got[3:].isfinite().all()


def local_u(b: int, grid, seed: int = 0) -> torch.Tensor:
    """U whose largest entries are each patch's nearest patches: -distance + tiny noise, the
    diagonal far below everything."""
    dist = C.grid_distances(grid)
    noise = 1e-3 * torch.rand(b, *dist.shape, generator=gen(seed), dtype=torch.float64)
    return (-dist - 100.0 * torch.eye(dist.shape[0], dtype=torch.float64)) + noise


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_planted_nearest_hits_give_an_index_of_one_and_are_supported(alpha):
    grid = (6, 6)
    hits = ia.top_interactions(local_u(60, grid), alpha)
    assert not hits.diagonal(dim1=1, dim2=2).any()
    index = BL.locality_index(hits, grid)
    torch.testing.assert_close(index, torch.ones(60, dtype=torch.float64))
    ci = C.paired_bootstrap_ci(index)
    assert C.margin_verdict(ci, 0.10) == "supported"
    # the same counts drawn at random (the null) are at chance: index ~ 0
    null = BL.locality_index(BL.random_u_hits(hits, gen(1)), grid)
    assert abs(null.mean().item()) < 0.05  # seeds 0..3: |mean| <= 0.015, sd/sqrt(60) ~ 0.011


def test_random_u_is_at_chance_and_negligible():
    grid, b = (6, 6), 200
    u = torch.rand(b, 36, 36, generator=gen(3), dtype=torch.float64)
    index = BL.locality_index(ia.top_interactions(u, 0.1), grid)
    assert index.isfinite().all()
    assert abs(index.mean().item()) < 0.03  # seeds 0..3: |mean| <= 0.003, sd/sqrt(b) = 0.0047
    ci = C.paired_bootstrap_ci(index)
    assert C.margin_verdict(ci, 0.10) == "negligible"


# ---- the random-U null ----


def test_random_u_hits_keep_each_rows_count_never_hit_p_and_are_seeded():
    grid = (4, 5)
    n = 20
    hits = random_hit_sets(30, grid, seed=5)
    hits[:, 0, 0] = True  # a diagonal hit is not counted
    count = (hits & ~torch.eye(n, dtype=torch.bool)).sum(dim=-1)
    drawn = BL.random_u_hits(hits, gen(7))
    assert drawn.dtype == torch.bool and drawn.shape == hits.shape
    assert torch.equal(drawn.sum(dim=-1), count)
    assert not drawn.diagonal(dim1=1, dim2=2).any()
    assert torch.equal(drawn, BL.random_u_hits(hits, gen(7)))
    assert not torch.equal(drawn, BL.random_u_hits(hits, gen(8)))
    assert not torch.equal(drawn, hits)
    # full rows stay full, empty rows stay empty
    full = torch.ones(2, n, n, dtype=torch.bool)
    assert torch.equal(BL.random_u_hits(full, gen()), full & ~torch.eye(n, dtype=torch.bool))
    assert not BL.random_u_hits(torch.eye(n, dtype=torch.bool).expand(2, n, n), gen()).any()


def test_random_u_hits_are_uniform_over_the_row():
    n = 9
    hits = torch.zeros(4000, n, n, dtype=torch.bool)
    hits[:, :, 0] = True  # |H_p| = 1 for p != 0, 0 for p = 0
    drawn = BL.random_u_hits(hits, gen(2)).sum(dim=0)
    assert drawn[0].sum() == 0
    off = ~torch.eye(n, dtype=torch.bool)
    off[0] = False
    expected, sd = 4000 / 8, math.sqrt(4000 * (1 / 8) * (7 / 8))
    assert (drawn[off] - expected).abs().max() < 5 * sd


# ---- C1b: the object-position confound ----


def centred_object_images(b: int, g: torch.Generator) -> torch.Tensor:
    """32 x 32 images on an 8 x 8 grid of 4 px patches: faint noise, with a bright square
    object of side 2 or 4 patches in the centre of the grid."""
    x = 0.05 * torch.rand(b, 3, 32, 32, generator=g)
    half = torch.randint(1, 3, (b,), generator=g)
    for i in range(b):
        lo, hi = (4 - int(half[i])) * 4, (4 + int(half[i])) * 4
        x[i, :, lo:hi, lo:hi] = 0.5 + 0.5 * torch.rand(3, hi - lo, hi - lo, generator=g)
    return x


def field_gap(hits: torch.Tensor, obj: torch.Tensor, grid) -> torch.Tensor:
    n = grid[0] * grid[1]
    order = torch.arange(n).expand(hits.shape[0], n)  # beta = 0: no patch dropped
    field = ia.responsive_field(ia.windows_from_hits(hits, grid), order, 0.0, grid)
    gap = C.field_size_gap(ia.field_size(field, grid), obj)
    assert gap.skipped == 0
    return gap.gap


@pytest.mark.parametrize("seed", [0, 1])
def test_c1b_geometry_alone_decided_section_8_and_the_random_u_null_removes_it(seed):
    grid, b, n = (8, 8), 300, 64
    g = gen(seed)
    obj = C.object_patch_mask(centred_object_images(b, g), grid)
    centre = torch.zeros(8, 8, dtype=torch.bool)
    centre[3:5, 3:5] = True
    assert (obj & ~centre.flatten()).any() and (obj.view(b, 8, 8)[:, 3:5, 3:5]).all()
    # U with no relation to the objects at all: iid per image
    hits = ia.top_interactions(torch.rand(b, n, n, generator=g, dtype=torch.float64), 0.1)
    real = field_gap(hits, obj, grid)
    null = field_gap(BL.random_u_hits(hits, g), obj, grid)
    # section 8: the raw gap is "supported" (< 0): a window must hold p, and the centre
    # patches' windows need not stretch to a border (seeds 0..3: mean -2.6..-3.6, hi < -1.9)
    old = C.paired_bootstrap_ci(real)
    assert old.high < -1.0
    # SPEC 9: gap(random U') - gap(U), paired, margin 0.05 N: negligible
    # (seeds 0..3: |mean| <= 0.46, CI within [-1.13, 1.14], margin 3.2)
    new = C.paired_bootstrap_ci(null - real)
    assert C.margin_verdict(new, 0.05 * n) == "negligible"
    assert abs(new.estimate) < 1.0


# ---- the margin rule ----


def test_margin_rule_on_paired_data():
    n = 10_000
    ref = np.zeros(n, dtype=bool)
    small = ref.copy()
    small[:20] = True  # 0.2 pp better
    ci = C.paired_bootstrap_ci(small, ref)
    assert ci.estimate == pytest.approx(0.002)
    assert ci.low > 0  # the interval excludes 0: section 8's rule would call it supported
    assert C.margin_verdict(ci, 0.005) == "negligible"  # too small to matter
    large = ref.copy()
    large[:200] = True  # 2 pp better
    assert C.margin_verdict(C.paired_bootstrap_ci(large, ref), 0.005) == "supported"
    assert C.margin_verdict(C.paired_bootstrap_ci(ref, large), 0.005) == "contradicted"


@pytest.mark.parametrize(
    ("low", "high", "want"),
    [
        (0.001, 0.003, "negligible"),  # 0.2 pp, tight
        (-0.003, -0.001, "negligible"),  # below 0 but within the margin: negligible comes first
        (0.015, 0.025, "supported"),  # 2 pp, tight
        (-0.015, -0.005, "contradicted"),  # entirely below 0, reaching -m
        (-0.02, -0.001, "contradicted"),
        (-0.01, 0.03, "inconclusive"),  # wide, straddles the margin
        (0.001, 0.009, "inconclusive"),  # above 0 but not clear of m
        (-0.004, 0.005, "inconclusive"),  # high == m: not < m
        (0.005, 0.01, "inconclusive"),  # low == m: not > m
        (-0.005, -0.001, "contradicted"),  # low == -m: not negligible
    ],
)
def test_margin_rule_on_planted_intervals(low, high, want):
    ci = C.Interval((low + high) / 2, low, high, 1000, "x", (high - low) / 4)
    assert C.margin_verdict(ci, 0.005) == want


def test_margin_rule_refuses_bad_input():
    ci = C.Interval(0.002, 0.001, 0.003, 1000, "x", 0.0005)
    for margin in (0.0, -0.005, math.nan):
        with pytest.raises(ValueError, match="margin"):
            C.margin_verdict(ci, margin)
    for low, high in ((math.nan, 0.003), (0.001, math.nan), (0.003, 0.001)):
        with pytest.raises(ValueError, match="not an interval"):
            C.margin_verdict(C.Interval(0.002, low, high, 1000, "x"), 0.005)


def test_common_verdict():
    assert C.common_verdict(["supported"] * 3) == "supported"
    assert C.common_verdict(["negligible"]) == "negligible"
    mixed = ["supported", "inconclusive", "supported"]
    assert C.common_verdict(mixed) == "mixed (2 supported, 1 inconclusive)"
    assert C.common_verdict(["supported", "negligible"]) == "mixed (1 negligible, 1 supported)"
    with pytest.raises(ValueError):
        C.common_verdict([])


# ---- the minimum detectable effect ----


def test_mde_is_2_8_standard_errors_on_a_large_sample():
    x = np.random.default_rng(10).normal(0.0, 1.0, 4000)
    ci = C.paired_bootstrap_ci(x, seed=1)
    assert C.mde(ci) == pytest.approx(2.8 * x.std(ddof=1) / math.sqrt(4000), rel=0.08)
    # t_interval's se is the textbook one; its MDE uses the noncentral t for 3 degrees of freedom
    t = C.t_interval([0.4, 1.1, -0.2, 0.9])
    assert t.se == pytest.approx(statistics.stdev([0.4, 1.1, -0.2, 0.9]) / 2)
    assert C.mde(t) == pytest.approx(C.mde_multiplier(3) * t.se)
    assert math.isnan(C.mde(C.Interval(0.0, -1.0, 1.0, 2, "x")))  # no se given


def test_an_effect_at_the_mde_is_detected_80_percent_of_the_time():
    n, sigma, runs = 200, 1.0, 400
    effect = 2.8 * sigma / math.sqrt(n)  # the design's MDE
    rng = np.random.default_rng(0)
    cis = [C.paired_bootstrap_ci(rng.normal(effect, sigma, n), seed=i) for i in range(runs)]
    # each run's own MDE estimates the design's (se noise ~5 % per run, 0.25 % over 400)
    assert statistics.mean(C.mde(ci) for ci in cis) == pytest.approx(effect, rel=0.03)
    power = statistics.mean(ci.low > 0 for ci in cis)
    assert power == pytest.approx(0.80, abs=0.06)  # binomial sd 0.02


# ---- C3: baseline orderings ----


def test_blank_scores_match_a_loop():
    grid, (ph, pw) = (3, 4), (4, 3)
    images = torch.rand(3, 3, 12, 12, generator=gen(1))
    images[1, :, 4:8, 3:6] = 0.25  # patch (1, 1) of image 1 is blank
    got = BL.blank_scores(images, grid)
    assert got.dtype == torch.float64 and got.shape == (3, 12)
    for b in range(3):
        for p in range(12):
            y, x = divmod(p, 4)
            cell = images[b, :, y * ph : (y + 1) * ph, x * pw : (x + 1) * pw]
            want = statistics.pstdev(cell.double().flatten().tolist())
            assert got[b, p].item() == pytest.approx(want, abs=1e-12)
    assert got[1, 5] == 0 and BL.ascending_order(got)[1, 0] == 5
    with pytest.raises(ValueError, match="grid"):
        BL.blank_scores(images, (5, 4))


def test_ascending_order_is_a_stable_ascending_sort():
    scores = torch.randint(0, 4, (5, 13), generator=gen(2)).double()  # many ties
    got = BL.ascending_order(scores)
    for b in range(5):
        want = sorted(range(13), key=lambda i: (scores[b, i].item(), i))
        assert got[b].tolist() == want


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.29, 0.5, 0.9])
def test_drop_lowest_and_highest_drop_floor_beta_n_from_either_end(beta):
    n = 100 if beta == 0.29 else 13  # 0.29 * 100 = 28.999... in floats, exactly 29
    order = BL.random_order(4, n, gen(3))
    k = ia.dip_drop_count(beta, n)
    assert k == math.floor(round(beta * n, 9))
    low, high = BL.drop_lowest(order, beta), BL.drop_highest(order, beta)
    for b in range(4):
        dropped_low = {p for p in range(n) if not low[b, p]}
        dropped_high = {p for p in range(n) if not high[b, p]}
        assert dropped_low == set(order[b, :k].tolist())
        assert dropped_high == set(order[b, n - k :].tolist())
    assert torch.equal(low, ia.dip_keep(order, beta))


def test_random_order_is_a_seeded_permutation_per_image():
    order = BL.random_order(3000, 7, gen(4))
    assert order.dtype == torch.long and order.shape == (3000, 7)
    assert torch.equal(order.sort(dim=1).values, torch.arange(7).expand(3000, 7))
    assert torch.equal(order, BL.random_order(3000, 7, gen(4)))
    assert not torch.equal(order, BL.random_order(3000, 7, gen(5)))
    assert len({tuple(r) for r in order[:50].tolist()}) > 40  # images differ
    first = torch.bincount(order[:, 0], minlength=7).double()
    assert (first - 3000 / 7).abs().max() < 5 * math.sqrt(3000 * (1 / 7) * (6 / 7))


# ---- C3: rollout and cls-attention through a real tiny ViT ----


def naive_attention_maps(model: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """Each block's softmax attention ``[k, T, T]`` for one image, by hand from the weights."""
    pe = model.patch_embed
    p = pe.patch_size[0]
    _, height, width = image.shape
    patches = [
        image[:, y : y + p, x : x + p].reshape(-1)
        for y in range(0, height, p)
        for x in range(0, width, p)
    ]
    tokens = torch.stack(patches) @ pe.proj.weight.reshape(pe.proj.out_channels, -1).T
    h = torch.cat((model.cls_token[0], tokens + pe.proj.bias)) + model.pos_embed[0]
    maps = []
    for block in model.blocks:
        attn = block.attn
        heads, dim = attn.num_heads, attn.head_dim
        t = h.shape[0]
        qkv = block.norm1(h) @ attn.qkv.weight.T + attn.qkv.bias
        q, k, v = qkv.reshape(t, 3, heads, dim).permute(1, 2, 0, 3)  # each [k, T, d]
        a = torch.softmax((q * dim**-0.5) @ k.transpose(-2, -1), dim=-1)
        maps.append(a)
        out = (a @ v).transpose(0, 1).reshape(t, heads * dim)
        h = h + (out @ attn.proj.weight.T + attn.proj.bias)
        h = h + block.mlp(block.norm2(h))
    return maps


def naive_rollout_and_cls(maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    joint = None
    for a in maps:
        a_hat = 0.5 * a.mean(dim=0) + 0.5 * torch.eye(a.shape[-1])
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)
        joint = a_hat if joint is None else a_hat @ joint
    return joint[0, 1:], maps[-1][:, 0, 1:].mean(dim=0)


def test_rollout_and_cls_attention_match_a_per_image_loop():
    model = tiny_vit(img_size=16, patch_size=4, num_classes=4)
    with torch.no_grad():
        for block in model.blocks:  # sharper attention than timm's init, so the maps differ
            block.attn.qkv.weight[:64].mul_(6.0)
        model.pos_embed.normal_(0.0, 1.0, generator=gen(6))
    # the stem and blocks are the plain ones the loop writes out
    assert model.training is False and model.num_prefix_tokens == 1
    for m in (model.norm_pre, model.patch_drop, model.patch_embed.norm):
        assert isinstance(m, nn.Identity)
    for block in model.blocks:
        for m in (block.ls1, block.ls2, block.attn.q_norm, block.attn.k_norm, block.attn.norm):
            assert isinstance(m, nn.Identity)
        assert isinstance(block.drop_path1, nn.Identity) and block.attn.qkv.bias is not None
        assert getattr(block.attn, "gate", None) is None
    x = torch.randn(3, 3, 16, 16, generator=gen(7))
    res = analyze(model, x, [0.1], rollout=True)
    assert res.rollout.shape == res.cls_attention.shape == (3, 16)
    with torch.no_grad():
        want = [naive_rollout_and_cls(naive_attention_maps(model, img)) for img in x]
    rollout = torch.stack([r for r, _ in want])
    cls = torch.stack([c for _, c in want])
    torch.testing.assert_close(res.rollout, rollout, rtol=0, atol=1e-5)
    torch.testing.assert_close(res.cls_attention, cls, rtol=0, atol=1e-5)
    # the check has teeth: the maps are far from uniform and the two orderings differ
    assert cls.std(dim=1).min() > 0.01 and rollout.std(dim=1).min() > 1e-3
    assert not torch.equal(BL.ascending_order(rollout), BL.ascending_order(cls))
    # without rollout neither is computed
    plain = analyze(model, x, [0.1])
    assert plain.rollout is None and plain.cls_attention is None


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_t_mde_is_detected_80_percent_of_the_time(seeds):
    """A t design over few seeds: an effect of ``mde`` (the noncentral-t multiplier times the
    standard error) is seen by the two-sided t test in 80 % of 20,000 simulated studies; SPEC
    9's large-sample 2.8 would be seen far less often with 3 seeds."""
    rng = np.random.default_rng(seeds)
    sd, crit = 1.0, stats.t.ppf(0.975, seeds - 1)
    one = C.t_interval(rng.normal(0.0, sd, seeds))
    assert one.df == seeds - 1 and C.mde(one) == pytest.approx(C.mde_multiplier(seeds - 1) * one.se)

    def power(effect):
        x = rng.normal(effect, sd, size=(20_000, seeds))
        se = x.std(axis=1, ddof=1) / math.sqrt(seeds)
        t = x.mean(axis=1) / se
        return float(((t > crit) | (t < -crit)).mean())

    assert power(C.mde_multiplier(seeds - 1) * sd / math.sqrt(seeds)) == pytest.approx(
        0.80, abs=0.015
    )
    if seeds == 3:
        assert power(2.8 * sd / math.sqrt(seeds)) < 0.55
    assert C.mde_multiplier(None) == 2.8 < C.mde_multiplier(seeds - 1)
