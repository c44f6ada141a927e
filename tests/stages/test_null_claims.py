"""The randomisation null of SPEC.md 10 (stages/null_claims.py) on planted images and a real tiny
timm ViT: its columns are the claims pass's own (collect_claims' ``_batch``), a randomised
teacher's U gives C1 and keep effects negligible (within their margins of 0) on images without
spatial structure, and on images with one contiguous object its keep effect survives the
randomisation (the effect is the images')."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from helpers import TINY_NET, scrambled, tiny_vit
from winft_lightning.core import baselines as B
from winft_lightning.core import claims as C
from winft_lightning.core.agreement import spearman_orders
from winft_lightning.core.analysis import analyze
from winft_lightning.core.claims_table import MARGINS
from winft_lightning.models import build_vit
from winft_lightning.stages import claims as S
from winft_lightning.stages import null_claims as N

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NORM = ([0.5] * 3, [0.25] * 3)
SETTINGS = dict(alphas=[0.1, 0.5], keep_alphas=[0.1], betas=[0.5], locality_alpha=0.1,
                object_threshold=0.1)  # fmt: skip


def noise_images(n: int, seed: int = 0) -> torch.Tensor:
    """Planted images without spatial structure: each 4 x 4 patch one i.i.d. uniform colour
    (16 x 16 px, the 4 x 4 grid of tiny_vit)."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.rand(n, 3, 4, 4, generator=g)
    return cells.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)


def object_images(n: int, seed: int = 0) -> torch.Tensor:
    """Planted images with one object: a bright textured rectangle of 5..10 px a side at a
    random place on a dark background (every image has object and background patches)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.05
    for i in range(n):
        w, h = (int(v) for v in torch.randint(5, 11, (2,), generator=g))
        x0 = int(torch.randint(0, 16 - w + 1, (1,), generator=g))
        y0 = int(torch.randint(0, 16 - h + 1, (1,), generator=g))
        x[i, :, y0 : y0 + h, x0 : x0 + w] = 0.4 + 0.6 * torch.rand(3, h, w, generator=g)
    return x


@pytest.fixture(scope="module")
def teacher():
    """A 3-block tiny ViT whose weights are far from timm's init (a stand-in for a trained one)."""
    return scrambled(tiny_vit(depth=3), seed=1)


def test_columns_are_the_claims_pass_own(teacher):
    """null_columns equals collect_claims' _batch on the same batches, seed and settings, for
    every column they share (the random U' from the same stream included)."""
    x01 = object_images(12)
    labels = torch.zeros(12, dtype=torch.long)
    net = {**TINY_NET, "depth": 3}
    state = teacher.state_dict()
    nets = {k: build_vit(**net, **kw).eval() for k, kw in
            {"full": {}, "awd": {"attn": "awd"}, "dip": {"dip": "multiply"}}.items()}  # fmt: skip
    for m in nets.values():
        m.load_state_dict(state)
    gens = {k: S._generator(0, i, torch.device("cpu")) for i, k in enumerate(("null", "c2", "c3"))}
    cols: dict[str, list[np.ndarray]] = {}
    keys = [f"img{i:03d}" for i in range(12)]
    opts = {**SETTINGS, "dip_forward": "kept"}  # collect_claims' default (C3's DIP forwards)
    with torch.inference_mode():
        for start in (0, 5, 10):  # batches of 5, 5, 2
            b = slice(start, start + 5)
            ties = B.tie_permutations([B.key_seed(k, 0) for k in keys[b]], 16)
            S._batch(cols, nets, teacher, x01[b], labels[b], NORM, opts, gens, (4, 4), ties)
    want = {k: np.concatenate(v) for k, v in cols.items()}
    got = N.null_columns(teacher, x01, NORM, (4, 4), SETTINGS, seed=0, batch_size=5, keys=keys)
    shared = set(got) & set(want)
    assert shared == set(got) - {N.AGREEMENT}
    for k in sorted(shared):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_agreement_column_is_dip_against_the_blank_order(teacher):
    x01 = object_images(6)
    res = analyze(teacher, TF.normalize(x01, *NORM), [0.1], (4, 4))
    want = spearman_orders(res.order, B.ascending_order(B.blank_scores(x01, (4, 4))))
    got = N.null_columns(teacher, x01, NORM, settings=SETTINGS)[N.AGREEMENT]
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-12)


def test_variants_limit_and_pairing(teacher):
    x01 = object_images(10)
    rec = N.randomisation_null(teacher, x01, NORM, settings=SETTINGS, depths=[1, 3], limit=8)
    assert list(rec) == ["trained", "all", "cascade:1", "cascade:3"]
    assert all(len(c["locality"]) == 8 for c in rec.values())
    trained = N.null_columns(teacher, x01[:8], NORM, settings=SETTINGS)
    for k, v in trained.items():
        np.testing.assert_array_equal(rec["trained"][k], v, err_msg=k)
    assert not np.array_equal(rec["all"]["locality"], rec["trained"]["locality"])
    np.testing.assert_array_equal(rec["all"]["object_fraction"], trained["object_fraction"])
    with pytest.raises(ValueError, match="modes"):
        N.randomisation_null(teacher, x01, NORM, modes=("some",))


@pytest.mark.parametrize("variant", ["all", "cascade:3"])
def test_a_randomised_teacher_gives_negligible_c1_and_keep_on_structureless_images(
    teacher, variant
):
    """SPEC 10's null on planted images whose patches are independent: a re-initialised
    teacher's U is no more local than chance, and keeps as much as a random U' (each
    interval within its margin: "negligible"). The trained stand-in's columns run too."""
    rec = N.randomisation_null(teacher, noise_images(200), NORM, settings=SETTINGS,
                               modes=("all", "cascade"), depths=[3], limit=None)  # fmt: skip
    summary = N.null_summary(rec, SETTINGS, 16)
    for row, margin in (("C1", MARGINS["C1"]), ("keep/alpha=0.1", MARGINS["keep"])):
        cell = summary[variant][row]
        assert cell["n"] == 200 and cell["margin"] == margin
        ci = C.paired_bootstrap_ci(N.u_effects(rec[variant], SETTINGS, 16)[row][0])
        assert (cell["effect"], cell["low"], cell["high"]) == (ci.estimate, ci.low, ci.high)
        assert C.margin_verdict(ci, margin) == C.NEGLIGIBLE == cell["verdict"], (row, cell)
    assert summary[variant][N.AGREEMENT]["verdict"] is None


def test_on_object_images_the_keep_effect_survives_the_randomisation(teacher):
    """The null is not vacuous: with one contiguous bright object per image, a teacher at
    timm's init keeps clearly less than a random U' (its hits gather by content, and content
    is contiguous): the keep effect is "supported" without any training; C1b's margin is
    0.05 N patches."""
    rec = N.randomisation_null(teacher, object_images(200), NORM, settings=SETTINGS,
                               modes=("all",), limit=None)  # fmt: skip
    summary = N.null_summary(rec, SETTINGS, 16)
    keep = summary["all"]["keep/alpha=0.1"]
    assert keep["verdict"] == C.SUPPORTED and keep["low"] > MARGINS["keep"], keep
    assert summary["all"]["C1b"]["margin"] == pytest.approx(MARGINS["C1b"] * 16)
