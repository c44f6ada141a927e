"""The learnable 2-D distance bias (models.distance, issue 33's local family), held to a hand
softmax of the biased logits: the maps capture reads, the fused and non-fused paths, AWD windows
folded in, the slopes' gradient, the teacher file round trip, the randomisation null and the
claims pass on such a teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_NET, attention_maps, teacher_keys, untrained_teacher
from naive import hand_attention
from winft_lightning.core.attention_distance import (
    mean_attention_distance,
    uniform_attention_distance,
)
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.core.claims import grid_distances
from winft_lightning.models import awd_attn_mask, build_vit
from winft_lightning.models.distance import SLOPE0, DistanceAttention, grid_distance_tokens
from winft_lightning.models.randomise import randomised
from winft_lightning.models.teacher import load_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BIASED = {**TINY_NET, "attn_bias": "distance"}  # 16 px, patch 4: a 4 x 4 grid, 2 heads


def _net(seed: int = 0, **kw):
    torch.manual_seed(seed)
    net = build_vit(**{**BIASED, **kw}).eval()
    with torch.no_grad():  # slopes of their own per head and block, away from the init
        for i, block in enumerate(net.blocks):
            block.attn.distance_slope.copy_(torch.tensor([-0.5, 1.5]) + 0.25 * i)
    return net


def _hand_maps(net, images, mask=None):
    """Per block ``softmax(q k^T * scale - softplus(s_h) * d)`` ([B, H, T, T] float64), ``d``
    the grid distance between patch centres (0 for the class token), -inf where ``mask`` is
    False (naive.hand_attention)."""
    d = torch.zeros(17, 17, dtype=torch.float64)
    d[1:, 1:] = grid_distances((4, 4))

    def bias(attn):
        return -torch.log1p(torch.exp(attn.distance_slope.double())).view(1, -1, 1, 1) * d

    return hand_attention(net, images, bias, mask)


def test_the_grid_distances_pad_the_prefix_with_zero():
    d = grid_distance_tokens((3, 4), 2)
    assert d.shape == (14, 14) and d.dtype == torch.float32
    assert torch.all(d[:2] == 0) and torch.all(d[:, :2] == 0)
    assert d[2, 3] == 1 and d[2, 2 + 4] == 1 and float(d[2, 2 + 5]) == pytest.approx(math.sqrt(2))
    assert d[2, 13] == pytest.approx(math.hypot(2, 3))  # patch (0, 0) to patch (2, 3)


def test_capture_reads_the_hand_softmax_of_the_biased_logits():
    """What core.capture reads at attn_drop (the non-fused path) is the hand softmax, every
    block; the slopes differ per head, so a head's own slope is used."""
    net, images = _net(), torch.randn(3, 3, 16, 16)
    got = list(iter_block_attention(net, images, patches_only=False))
    want = _hand_maps(net, images)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    plain = build_vit(**TINY_NET).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if "slope" not in k})
    unbiased = next(iter(iter_block_attention(plain, images, patches_only=False)))
    assert (unbiased - got[0]).abs().max() > 0.05  # the bias moves the maps


def test_fused_and_unfused_paths_give_the_same_logits_with_and_without_windows():
    """The fused path (SDPA with the float bias) equals the non-fused one, unrestricted and
    with AWD windows folded in (False -> -inf); the windowed maps are zero outside the windows
    and the hand softmax inside."""
    net, images = _net(), torch.randn(2, 3, 16, 16)
    awd = _net(attn="awd")
    windows = torch.tensor([[r - 1, c - 1, r + 1, c + 1] for r in range(4) for c in range(4)])
    windows = windows.clamp(0, 3).expand(2, 16, 4).contiguous()
    mask = awd_attn_mask(windows, (4, 4), 1)
    for model, kw in ((net, {}), (awd, {"windows": windows})):
        fused = model(images, **kw)
        for m in model.modules():
            if isinstance(m, DistanceAttention):
                m.fused_attn = False
        torch.testing.assert_close(model(images, **kw), fused, atol=1e-5, rtol=1e-5)
    got = attention_maps(awd, images, windows=windows)
    want = _hand_maps(awd, images, mask)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
        assert torch.all(g[~mask.expand_as(g)] == 0)
    torch.testing.assert_close(awd(images, windows=windows), net(images, attn_mask=mask))


def test_the_slopes_learn_and_start_local():
    """A loss reaches every slope but the last block's (its patch queries, the only rows with
    a bias, never reach the class token's head); a fresh biased network attends about a third
    as far as uniform attention on the 8 x 8 grid (below the 5 x 5 reference), a default one
    as far."""
    net = build_vit(**BIASED).train()
    F.cross_entropy(net(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    *body, last = net.blocks
    assert all(b.attn.distance_slope.grad.abs().min() > 0 for b in body)
    assert torch.all(last.attn.distance_slope.grad == 0)
    shape = dict(img_size=32, embed_dim=48, depth=2, num_heads=3)
    images = torch.randn(4, 3, 32, 32)
    uniform = uniform_attention_distance((8, 8))
    for bias, low, high in (("distance", 0.2, uniform_attention_distance((8, 8), 5) / uniform),
                            ("none", 0.95, 1.05)):  # fmt: skip
        torch.manual_seed(0)
        model = build_vit(**{**TINY_NET, **shape, "attn_bias": bias}).eval()
        for attn in iter_block_attention(model, images, patches_only=False):
            fraction = float(mean_attention_distance(attn, (8, 8)).mean()) / uniform
            assert low < fraction < high, (bias, fraction)


def test_a_teacher_file_keeps_its_slopes(tmp_path):
    """A Lightning teacher of the family saved as the pipeline saves one reads back, through
    load_teacher and through build_vit(checkpoint=...), with its slopes and the same logits;
    the file does not fit the default architecture."""
    ckpt_path = untrained_teacher(tmp_path / "teacher.ckpt", attn_bias="distance")
    ckpt = torch.load(ckpt_path, weights_only=True)
    slopes = {k: v for k, v in ckpt["state_dict"].items() if k.endswith("distance_slope")}
    assert len(slopes) == TINY_NET["depth"]
    for i, key in enumerate(slopes):
        ckpt["state_dict"][key] = torch.tensor([0.3, -0.7]) * (i + 1)
    torch.save(ckpt, ckpt_path)
    model, _ = load_teacher(ckpt_path)
    built = build_vit(**BIASED, checkpoint=str(ckpt_path)).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(images), built(images))
    for i, block in enumerate(model.blocks):
        assert torch.equal(block.attn.distance_slope, torch.tensor([0.3, -0.7]) * (i + 1))
    with pytest.raises(RuntimeError, match="distance_slope"):
        build_vit(**TINY_NET).load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items()})


def test_the_randomisation_null_redraws_the_slopes():
    """timm's init (the null's re-initialisation) sets every slope back to softplus = SLOPE0;
    the cascade of depth 1 redraws the last block's only."""
    net = _net()
    fresh = randomised(net, "all", seed=1)
    init = math.log(math.expm1(SLOPE0))
    for block in fresh.blocks:
        assert torch.allclose(block.attn.distance_slope, torch.full((2,), init))
    cascade = randomised(net, "cascade", 1, seed=1)
    assert torch.equal(cascade.blocks[0].attn.distance_slope, net.blocks[0].attn.distance_slope)
    assert torch.allclose(cascade.blocks[1].attn.distance_slope, torch.full((2,), init))
    assert cascade.blocks[0].attn.distance is not None  # the grid's distances are copied


def test_options_the_bias_does_not_define_are_refused():
    for kw, match in (({"attn": "winft"}, "not WinfT"), ({"attn_bias": "rel"}, "attn_bias"),
                      ({"attn": "awd", "sparse": True}, "not sparse")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            build_vit(**{**BIASED, **kw})


def test_the_claims_pass_on_such_a_teacher_reads_its_slopes(digits_shards, tmp_path):
    """The claims pass on a teacher of the family: its networks carry the slopes, DIP's
    kept-token forwards give every column the dense forwards give, and the unrestricted column
    equals the loaded teacher's own forward."""
    from torchvision.transforms.v2 import functional as TF

    from winft_lightning.data.datamodule import ShardDataModule
    from winft_lightning.models.teacher import teacher_norm
    from winft_lightning.stages.claims import collect_claims

    ckpt = untrained_teacher(tmp_path / "teacher.ckpt", attn_bias="distance")
    small = dict(alphas=[0.1], keep_alphas=[0.1], betas=[0.25, 0.75], locality_alpha=0.1,
                 object_threshold=0.1, seed=0, limit=20, batch_size=20, num_workers=0,
                 device="cpu")  # fmt: skip
    cols, facts = collect_claims(ckpt, digits_shards, **small)
    dense, dense_facts = collect_claims(ckpt, digits_shards, **small, dip_forward="dense")
    assert (facts["dip_forward"], dense_facts["dip_forward"]) == ("kept", "dense")
    assert facts["teacher"]["net"]["attn_bias"] == "distance"
    for k in cols:
        assert np.array_equal(cols[k], dense[k], equal_nan=cols[k].dtype.kind == "f"), k
    model, info = load_teacher(ckpt)
    dm = ShardDataModule(digits_shards, batch_size=20, num_workers=0, img_size=16,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), hflip=False)  # fmt: skip
    batch = next(iter(dm.make_loader("test", rank=0, world_size=1)))
    with torch.no_grad():
        x = TF.normalize(batch["image"], *teacher_norm(model, info))
        want = model(x).argmax(-1) == batch["label"]
    assert np.array_equal(want.numpy(), cols["correct:full"])


def test_teacher_attn_bias_is_in_the_teacher_key_only_when_not_none(make_cfg, tmp_path):
    """``teacher.attn_bias=none`` keys the teacher exactly as before the option; "distance"
    goes into the teacher's net (its checkpoint's architecture) and its own store entry."""
    from winft_lightning.stages.cache import teacher_model

    key, before, _ = teacher_keys(make_cfg, tmp_path, without=("attn_bias",))
    assert key == before
    assert "attn_bias" not in teacher_model(make_cfg("experiment=fmnist_awd_vit"))["net"]
    local, _, _ = teacher_keys(make_cfg, tmp_path, "teacher.attn_bias=distance")
    assert local != key
    distance = make_cfg("experiment=fmnist_awd_vit", "teacher.attn_bias=distance")
    assert teacher_model(distance)["net"]["attn_bias"] == "distance"


def test_the_cost_probe_trains_the_slopes_only_in_its_learnable_arm(monkeypatch):
    """bench.distance_cost's arms: the local net's step moves its slopes; the frozen arm's
    step moves every other weight and leaves the slopes where they started (so its float
    attn_mask needs no gradient: the fused path)."""
    from bench import distance_cost

    net = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    monkeypatch.setitem(distance_cost.SHAPES, "tiny", (net, 8))
    for arm, slopes_move in (("distance", True), ("distance_frozen_slopes", False)):
        model, step = distance_cost.arm_step(arm, "tiny")
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        step()
        after = dict(model.named_parameters())
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        slopes = {k for k in before if k.endswith("distance_slope")}
        assert len(slopes) == net["depth"]
        assert (slopes <= moved) is slopes_move and bool(slopes & moved) is slopes_move
        assert "head.weight" in moved
