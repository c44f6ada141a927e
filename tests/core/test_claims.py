"""The claims core of SPEC.md 8 (claims.py) on planted data whose answer is known: intervals
against textbook ones, U' hit distances held to a naive loop, the C2/C3 controls' properties,
and C3 end to end through a real tiny ViT trained here (the margin rule: test_baselines.py)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from scipy import stats

from helpers import TINY_NET
from winft_lightning.core import baselines as BL
from winft_lightning.core import claims as C
from winft_lightning.core import interactions as ia
from winft_lightning.models import build_vit

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("claims")]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- intervals ----


@pytest.mark.parametrize("kind", ["normal", "bernoulli"])
def test_bootstrap_matches_normal_theory_on_a_large_sample(kind):
    rng = np.random.default_rng(1)
    n = 4000
    x = rng.normal(3.0, 2.0, n) if kind == "normal" else (rng.random(n) < 0.3).astype(float)
    ci = C.paired_bootstrap_ci(x, resamples=10_000, seed=3)  # quantile noise ~1.3 % of half
    half = 1.96 * x.std(ddof=1) / math.sqrt(n)
    assert ci.estimate == pytest.approx(x.mean())
    assert ci.low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bootstrap_of_a_constant_has_zero_width_at_it():
    ci = C.paired_bootstrap_ci(torch.full((50,), 0.1))
    assert ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1)
    assert ci.estimate == pytest.approx(0.1)


def test_bootstrap_is_paired_seeded_and_checked():
    rng = np.random.default_rng(2)
    a = torch.from_numpy(rng.random(300) < 0.7)  # correctness, bool
    b = torch.from_numpy(rng.random(300) < 0.5)
    paired = C.paired_bootstrap_ci(a, b, seed=5)
    assert paired == C.paired_bootstrap_ci(a.double() - b.double(), seed=5)
    assert paired.estimate == pytest.approx(a.double().mean() - b.double().mean())
    assert paired != C.paired_bootstrap_ci(a, b, seed=6)
    with pytest.raises(ValueError, match="resamples"):
        C.paired_bootstrap_ci(a, b, resamples=1999)
    with pytest.raises(ValueError, match="size"):
        C.paired_bootstrap_ci(a, b[:-1])
    with pytest.raises(ValueError, match="finite"):
        C.paired_bootstrap_ci([1.0, float("nan"), 2.0])


def test_t_interval_is_the_textbook_formula():
    deltas = [0.4, 1.1, -0.2, 0.9]
    mean, sd = statistics.mean(deltas), statistics.stdev(deltas)
    half = stats.t.ppf(0.975, 3) * sd / math.sqrt(4)
    ci = C.t_interval(deltas)
    assert (ci.estimate, ci.low, ci.high, ci.n) == pytest.approx(
        (mean, mean - half, mean + half, 4)
    )
    assert C.t_interval(torch.tensor([2.0, 2.0, 2.0])).low == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        C.t_interval([1.0])


# ---- C1: locality ----


def naive_hit_distances(u, alpha, grid):
    """d_p and |H_p| by loops: U' by a stable sort of the flat entries, H_p excludes p."""
    _, w = grid
    b, n, _ = u.shape
    t = ia.top_count(alpha, n)
    hit = torch.full((b, n), float("nan"), dtype=torch.float64)
    count = torch.zeros(b, n, dtype=torch.long)
    for bi in range(b):
        flat = sorted((-float(u[bi, k // n, k % n]), k) for k in range(n * n))
        chosen = {k for _, k in flat[:t]}
        for p in range(n):
            members = [i for i in range(n) if i != p and p * n + i in chosen]
            count[bi, p] = len(members)
            if members:
                dists = [math.hypot(i % w - p % w, i // w - p // w) for i in members]
                hit[bi, p] = sum(dists) / len(dists)
    return hit, count


@pytest.mark.parametrize("grid", [(3, 4), (4, 4), (2, 5)])
def test_hit_distance_matches_a_loop(grid):
    """baselines.hit_distance: the mean over patches with |H_p| >= 1 of d_p, held to loops."""
    n = grid[0] * grid[1]
    u = torch.rand(3, n, n, generator=gen(7), dtype=torch.float64)
    hit, count = naive_hit_distances(u, 0.1, grid)
    want = torch.stack([hit[b][count[b] > 0].mean() for b in range(3)])
    torch.testing.assert_close(BL.hit_distance(ia.top_interactions(u, 0.1), grid), want)


def test_random_hits_are_uniform_without_replacement_and_never_p():
    counts = torch.randint(0, 9, (50, 9), generator=gen(3))
    drawn = C.random_hits(counts, gen(4))
    assert torch.equal(drawn.sum(dim=-1), counts)
    assert not drawn.diagonal(dim1=1, dim2=2).any()
    assert torch.equal(drawn, C.random_hits(counts, gen(4)))  # seeded
    single = C.random_hits(torch.ones(4000, 9, dtype=torch.long), gen(5)).sum(dim=0)
    off = ~torch.eye(9, dtype=torch.bool)
    expected, sd = 4000 / 8, math.sqrt(4000 * (1 / 8) * (7 / 8))
    assert (single[off] - expected).abs().max() < 5 * sd  # each j != p equally likely
    with pytest.raises(ValueError, match="counts"):
        C.random_hits(torch.full((1, 9), 9), gen())


# ---- C1b: object vs background field sizes ----


def test_object_patches_and_field_size_gap_match_a_loop():
    grid = (2, 3)
    images = torch.rand(4, 3, 4, 6, generator=gen(8)) * 0.2
    images[3] = 1.0  # all object: skipped
    mask = C.object_patch_mask(images, grid, threshold=0.1)
    sizes = torch.randint(1, 7, (4, *grid), generator=gen(9))
    gap = C.field_size_gap(sizes, mask)
    want, skipped = [], 0
    for b in range(4):
        obj, bg = [], []
        for p in range(6):
            y, x = divmod(p, 3)
            patch_mean = images[b, :, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].double().mean()
            assert bool(mask[b, p]) == (patch_mean > 0.1)
            (obj if patch_mean > 0.1 else bg).append(float(sizes[b, y, x]))
        if obj and bg:
            want.append(statistics.mean(obj) - statistics.mean(bg))
        else:
            skipped += 1
    assert gap.skipped == skipped >= 1
    torch.testing.assert_close(gap.gap, torch.tensor(want, dtype=torch.float64))
    with pytest.raises(ValueError, match="grid"):
        C.object_patch_mask(images, (3, 3))


# ---- C2: control windows ----


def check_like(control, windows, grid):
    h, w = grid
    x = torch.arange(h * w) % w
    y = torch.arange(h * w) // w
    assert torch.equal(ia.window_areas(control), ia.window_areas(windows))
    assert torch.equal(control[..., 2] - control[..., 0], windows[..., 2] - windows[..., 0])
    assert (control[..., 0] >= 0).all() and (control[..., 1] >= 0).all()
    assert (control[..., 2] < w).all() and (control[..., 3] < h).all()
    assert ((control[..., 0] <= x) & (x <= control[..., 2])).all()  # contains p
    assert ((control[..., 1] <= y) & (y <= control[..., 3])).all()


@pytest.mark.parametrize("grid", [(4, 5), (6, 6)])
def test_control_windows_have_awd_size_contain_p_and_fit(grid):
    n = grid[0] * grid[1]
    windows = ia.awd_windows(torch.rand(6, n, n, generator=gen(2)), 0.02, grid)
    check_like(C.random_windows_like(windows, grid, gen(3)), windows, grid)
    centred = C.centred_windows_like(windows, grid)
    check_like(centred, windows, grid)
    # an odd box that fits around p is centred on it exactly
    inner = torch.tensor([[1, 1, 3, 3]]).expand(1, n, 4)  # 3 x 3
    box = C.centred_windows_like(inner, grid)[0, grid[1] + 1]  # p = (1, 1)
    assert box.tolist() == [0, 0, 2, 2]


def test_random_windows_hit_every_fitting_position_uniformly():
    grid = (3, 4)  # h = 3, w = 4
    one = torch.tensor([0, 0, 1, 1]).expand(12, 4)  # a 2 x 2 box for every patch
    draws = C.random_windows_like(one.expand(3000, 12, 4), grid, gen(6))
    for p in range(12):
        x, y = p % 4, p // 4
        fits = {(xl, yt) for xl in range(4 - 1) for yt in range(3 - 1)
                if xl <= x <= xl + 1 and yt <= y <= yt + 1}  # fmt: skip
        starts = draws[:, p, :2].tolist()
        seen = {tuple(s) for s in starts}
        assert seen == fits
        k = len(fits)
        sd = math.sqrt(3000 * (1 / k) * (1 - 1 / k))
        for pos in fits:
            assert abs(starts.count(list(pos)) - 3000 / k) <= 5 * sd


# ---- C3: the orderings' keep masks ----


def test_random_and_highest_keep_masks():
    keep = BL.drop_lowest(BL.random_order(2000, 10, gen(1)), 0.3)
    assert keep.shape == (2000, 10) and ((~keep).sum(dim=1) == 3).all()
    freq = (~keep).double().mean(dim=0)
    assert (freq - 0.3).abs().max() < 5 * math.sqrt(0.3 * 0.7 / 2000)
    variance = torch.rand(4, 10, generator=gen(2))
    order = torch.sort(variance, dim=1, stable=True).indices
    highest = BL.drop_highest(order, 0.3)
    top3 = variance.topk(3, dim=1).indices
    assert torch.equal(~highest, torch.zeros_like(highest).scatter_(1, top3, True))
    assert not (~highest & ~ia.dip_keep(order, 0.3)).any()


# ---- C3 end to end: a real tiny ViT that ignores the DIP-selected patches ----

GRID, N, OBJECTS, CLASSES = (4, 4), 16, 4, 4


def object_images(batch, g, templates):
    """16 x 16 images, 4 x 4 patches: OBJECTS random patches per image show the class's template,
    the rest is faint noise with no class information."""
    labels = torch.randint(CLASSES, (batch,), generator=g)
    obj = torch.zeros(batch, N, dtype=torch.bool)
    obj.scatter_(1, torch.rand(batch, N, generator=g).argsort(dim=1)[:, :OBJECTS], True)
    tiles = 0.1 * torch.rand(batch, N, 3, 4, 4, generator=g)
    tiles[obj] = templates[labels].repeat_interleave(OBJECTS, dim=0)
    images = tiles.view(batch, 4, 4, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(batch, 3, 16, 16)
    return images, labels, obj


@pytest.fixture(scope="module")
def object_teacher():
    g = gen(0)
    templates = torch.rand(CLASSES, 3, 4, 4, generator=g)
    torch.manual_seed(0)
    net = build_vit(**TINY_NET, dip="multiply")
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(60):
        x, y, _ = object_images(32, g, templates)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), object_images(300, gen(1), templates)


def c3_intervals(net, data, u, beta):
    """C3 from a U: DIP order -> keep masks -> the network -> correctness -> paired CIs of
    DIP-dropped accuracy minus random-dropped and minus highest-variance-dropped accuracy."""
    images, labels, _ = data
    order = ia.dip_order(u)  # ascending column variance of U
    dip = C.per_image_correct(net, images, labels, keep=ia.dip_keep(order, beta))
    random = BL.drop_lowest(BL.random_order(len(labels), N, gen(9)), beta)
    highest = BL.drop_highest(order, beta)
    return {
        name: C.paired_bootstrap_ci(dip, C.per_image_correct(net, images, labels, keep=keep))
        for name, keep in (("random", random), ("highest", highest))
    }


def test_c3_supported_when_dip_selects_what_the_teacher_ignores(object_teacher):
    net, data = object_teacher
    obj = data[2]
    rows = torch.rand(obj.shape[0], N, 1, generator=gen(2))
    assert C.per_image_correct(net, data[0], data[1]).double().mean() > 0.9
    # U planted per image: object columns vary over rows, background columns are constant, so
    # DIP's lowest-variance patches are the background the teacher learned to ignore
    for ci in c3_intervals(net, data, obj.unsqueeze(1) * rows, beta=0.75).values():
        assert C.margin_verdict(ci, 0.05) == "supported"
    # the same pipeline with the variances inverted drops the objects first: contradicted
    for ci in c3_intervals(net, data, (~obj).unsqueeze(1) * rows, beta=0.75).values():
        assert C.margin_verdict(ci, 0.05) == "contradicted"


def test_per_image_correct_passes_windows_and_restores_the_mode():
    torch.manual_seed(0)
    net = build_vit(**TINY_NET, attn="awd").train()
    x, y = torch.rand(5, 3, 16, 16, generator=gen()), torch.arange(5)
    full = torch.tensor([0, 0, 3, 3]).expand(5, N, 4)  # the whole grid: plain attention
    correct = C.per_image_correct(net, x, y, windows=full)
    assert net.training
    with torch.no_grad():
        want = net.eval()(x, windows=full).argmax(dim=-1) == y
    assert correct.dtype == torch.bool and torch.equal(correct, want)
