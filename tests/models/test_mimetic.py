"""Mimetic initialisation (models.mimetic, SPEC 10 "a regime where locality exists"), on the
project's tiny teacher shape (width 96, 3 heads of 32, 8 x 8 grid) and ViT-B/16's (width 768,
12 heads of 64, 14 x 14 grid; one block: each costs 13 SVDs of 768 x 768).

Closed forms held: per head, ``W_q W_k^T`` is exactly the best rank-k approximation of
``alpha1 Z + beta1 I`` (Eckart-Young: the residual's squared Frobenius norm is the sum of the
dropped squared singular values); with one head (k = d) and for ``W_v W_proj`` (full rank) the
product is ``beta I + alpha Z`` itself: its diagonal has mean ``beta`` and spread
``alpha / sqrt(d)``, its off-diagonal entries mean 0 and spread ``alpha / sqrt(d)``."""

from __future__ import annotations

import math

import pytest
import torch

from winft_lightning.core.attention_distance import (
    mean_attention_distance,
    uniform_attention_distance,
)
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.models import build_vit
from winft_lightning.models.mimetic import mimetic_factors, mimetic_init_, sincos_pos_embed

TINY = dict(
    model_name="vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=96, depth=6,
    num_heads=3, num_classes=10,
)  # fmt: skip
B16 = dict(model_name="vit_base_patch16_224", depth=1, num_classes=10)


@pytest.fixture(scope="module")
def b16():
    """ViT-B/16's widths and grid, one block, default and mimetic (seed 0), no weights read."""
    torch.manual_seed(0)
    default = build_vit(**B16).eval()
    mimetic = mimetic_init_(build_vit(**B16), generator=torch.Generator().manual_seed(0)).eval()
    return default, mimetic


def _products(attn):
    """Per head ``W_q^h W_k^hT`` ``[H, d, d]`` and the layer's ``W_v W_proj`` ``[d, d]``,
    float64, in the paper's row-token convention (``q = x W_q``)."""
    w = attn.qkv.weight.detach().double()
    d, heads = w.shape[1], attn.num_heads
    q, k, v = w[:d].view(heads, -1, d), w[d : 2 * d].view(heads, -1, d), w[2 * d :]
    return q.mT @ k, v.T @ attn.proj.weight.detach().double().T


def _check_full_rank(product, alpha, beta):
    """``product`` [d, d] against ``beta I + alpha Z``'s diagonal and off-diagonal moments."""
    d = product.shape[0]
    diag = product.diagonal()
    off = product[~torch.eye(d, dtype=torch.bool)]
    spread = alpha / math.sqrt(d)
    assert abs(diag.mean() - beta) < 5 * spread / math.sqrt(d)
    assert abs(diag.std() / spread - 1) < 5 / math.sqrt(2 * d)
    assert abs(off.mean()) < 5 * spread / d
    assert abs(off.std() / spread - 1) < 0.05


def _targets(model, seed, alpha1=0.7, beta1=0.7, alpha2=0.4, beta2=0.4):
    """Per block, ``(alpha1 Z_h + beta1 I [H, d, d], alpha2 Z - beta2 I [d, d])`` as the
    same-seeded generator draws them (block by block: the heads' Z, then the value Z)."""
    gen = torch.Generator().manual_seed(seed)
    for block in model.blocks:
        heads, d = block.attn.num_heads, block.attn.qkv.weight.shape[1]
        eye = torch.eye(d, dtype=torch.float64)
        z = torch.randn(heads, d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        zv = torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        yield block.attn, alpha1 * z + beta1 * eye, alpha2 * zv - beta2 * eye


def _check_heads(model, seed, qk_scale=1.0, spectra=None):
    """Per head h, ``P = W_q W_k^T`` (over ``qk_scale``) is the target's best rank-k
    approximation ``U_k S_k V_k^T``: ``W_q^T W_q = W_k^T W_k = S_k`` (diagonal), the residual
    ``M - P`` annihilates W_k on the right and W_q on the left, and (heads ``spectra``, all
    when None) S_k is M's top k singular values, the residual's Frobenius norm its dropped
    ones (Eckart-Young). ``W_v W_proj`` equals its target exactly (full rank)."""
    for attn, target, value in _targets(model, seed):
        qk, vp = _products(attn)
        w = attn.qkv.weight.detach().double() / math.sqrt(qk_scale)
        d, k = w.shape[1], attn.head_dim
        wq, wk = w[:d].view(-1, k, d).mT, w[d : 2 * d].view(-1, k, d).mT  # [H, d, k]
        gram = wk.mT @ wk
        s_k = gram.diagonal(dim1=-2, dim2=-1)
        assert torch.allclose(gram, torch.diag_embed(s_k), atol=1e-5)
        assert torch.allclose(wq.mT @ wq, gram, atol=1e-5)
        residual = target - qk / qk_scale
        assert (residual @ wk).abs().max() < 1e-5 and (wq.mT @ residual).abs().max() < 1e-5
        for h in range(len(target)) if spectra is None else spectra:
            s = torch.linalg.svdvals(target[h])
            assert torch.allclose(s_k[h].sort(descending=True).values, s[:k], atol=1e-5)
            dropped = s[k:].square().sum()
            assert torch.allclose(residual[h].square().sum(), dropped, rtol=1e-5)
        assert torch.allclose(vp, value, atol=1e-5)


def test_factors_multiply_to_the_target_at_full_rank():
    gen = torch.Generator().manual_seed(0)
    left, right, target = mimetic_factors(48, 48, 0.4, -0.4, gen, count=2)
    assert left.shape == right.shape == target.shape == (2, 48, 48)
    assert torch.allclose(left @ right.mT, target, atol=1e-10)
    with pytest.raises(ValueError, match="rank"):
        mimetic_factors(48, 49, 0.7, 0.7, gen)


def test_tiny_products_follow_the_closed_form():
    model = mimetic_init_(build_vit(**TINY), generator=torch.Generator().manual_seed(3))
    _check_heads(model, 3)
    for block in model.blocks:
        _check_full_rank(_products(block.attn)[1], 0.4, -0.4)
    one_head = mimetic_init_(
        build_vit(**{**TINY, "num_heads": 1}), generator=torch.Generator().manual_seed(1)
    )  # k = d: the query-key product is the target itself
    for block in one_head.blocks:
        qk, vp = _products(block.attn)
        _check_full_rank(qk[0], 0.7, 0.7)
        _check_full_rank(vp, 0.4, -0.4)


def test_b16_products_follow_the_closed_form(b16):
    _, mimetic = b16
    _check_heads(mimetic, 0, spectra=(0, 11))
    _check_full_rank(_products(mimetic.blocks[0].attn)[1], 0.4, -0.4)


def test_qk_scale_scales_the_query_key_product_only():
    base = mimetic_init_(build_vit(**TINY), generator=torch.Generator().manual_seed(0))
    scaled = mimetic_init_(
        build_vit(**TINY), qk_scale=8.0, generator=torch.Generator().manual_seed(0)
    )
    _check_heads(scaled, 0, qk_scale=8.0)
    for a, b in zip(base.blocks, scaled.blocks, strict=True):
        assert torch.allclose(8.0 * _products(a.attn)[0], _products(b.attn)[0], atol=1e-4)
        assert torch.equal(a.attn.proj.weight, b.attn.proj.weight)


def test_sincos_position_embedding_with_a_zero_class_slot(b16):
    _, mimetic = b16
    pe = mimetic.pos_embed.detach()
    assert pe.shape == (1, 1 + 196, 768)
    assert torch.equal(pe[0, 0], torch.zeros(768))
    assert torch.allclose(pe, sincos_pos_embed(mimetic).float())
    # nearby patches' embeddings are more alike than far ones' (row-major 14 x 14 grid)
    sim = pe[0, 1:] @ pe[0, 1:].T
    assert sim[0, 1] > sim[0, 2] > sim[0, 13] and sim[0, 14] > sim[0, 28]


def test_seeded_and_global_rng_untouched():
    model = build_vit(**TINY)
    state = torch.get_rng_state()
    a = mimetic_init_(model, generator=torch.Generator().manual_seed(5)).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    a = {k: v.clone() for k, v in a.items()}
    b = mimetic_init_(model, generator=torch.Generator().manual_seed(5)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = mimetic_init_(model, generator=torch.Generator().manual_seed(6)).state_dict()
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_build_vit_init_keeps_the_architecture():
    torch.manual_seed(0)
    default = build_vit(**TINY, attn="awd")
    torch.manual_seed(0)
    mimetic = build_vit(**TINY, attn="awd", init="mimetic")
    sd, sm = default.state_dict(), mimetic.state_dict()
    assert list(sd) == list(sm) and all(sd[k].shape == sm[k].shape for k in sd)
    assert type(default) is type(mimetic)
    torch.manual_seed(0)  # the teacher's seed picks its Z
    again = build_vit(**TINY, init="mimetic")
    assert torch.equal(again.blocks[0].attn.qkv.weight, mimetic.blocks[0].attn.qkv.weight)
    torch.manual_seed(1)
    other = build_vit(**TINY, init="mimetic")
    assert not torch.equal(other.blocks[0].attn.qkv.weight, mimetic.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="init must be one of"):
        build_vit(**TINY, init="zeros")
    with pytest.raises(ValueError, match="need init='mimetic'"):
        build_vit(**TINY, init_options={"qk_scale": 2.0})


def _distance_fraction(model, images):
    """Per block, the mean attention distance (images and heads averaged) over uniform's."""
    grid = tuple(model.patch_embed.grid_size)
    uniform = uniform_attention_distance(grid)
    maps = iter_block_attention(model.eval(), images, patches_only=False)
    return torch.stack([mean_attention_distance(a, grid).mean() / uniform for a in maps])


def _images(size, seed):
    """Two random images and two smooth ones (random low-frequency fields, upsampled)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, 3, size, size, generator=gen)
    coarse = torch.randn(2, 3, 4, 4, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic")
    return torch.cat([noise, smooth])


def test_tiny_mimetic_attention_falls_off_with_distance_at_init():
    torch.manual_seed(0)
    default = build_vit(**TINY)
    torch.manual_seed(0)
    mimetic = build_vit(**TINY, init="mimetic")
    images = _images(32, 0)
    d, m = _distance_fraction(default, images), _distance_fraction(mimetic, images)
    # measured: default 1.00 in every block; mimetic 0.47-0.87 (deeper blocks less local)
    assert torch.all((d - 1).abs() < 0.03), d
    assert torch.all(m < 0.95) and m[:3].max() < 0.7, m
    assert m[:2].max() < uniform_attention_distance((8, 8), 7) / uniform_attention_distance((8, 8))


def test_b16_mimetic_attention_falls_off_with_distance_at_init(b16):
    default, mimetic = b16
    images = _images(224, 1)
    d, m = _distance_fraction(default, images), _distance_fraction(mimetic, images)
    assert torch.all((d - 1).abs() < 0.03), d
    assert m[0] < 0.7, m


def test_teacher_init_is_in_the_teacher_key_only_when_not_default(make_cfg, tmp_path):
    """``teacher.init=default`` keys (and builds) the teacher exactly as before the option;
    a mimetic teacher, or other init_options, never shares a default teacher's store entry."""
    from helpers import teacher_keys
    from winft_lightning.stages.cache import teacher_model

    key, before, _ = teacher_keys(make_cfg, tmp_path, without=("init", "init_options"))
    assert key == before
    assert "init" not in teacher_model(make_cfg("experiment=fmnist_awd_vit"))["net"]
    mimetic = make_cfg("experiment=fmnist_awd_vit", "teacher.init=mimetic")
    assert teacher_model(mimetic)["net"]["init"] == "mimetic"
    keys = {key, teacher_keys(make_cfg, tmp_path, "teacher.init=mimetic")[0],
            teacher_keys(make_cfg, tmp_path, "teacher.init=mimetic",
                         "teacher.init_options={qk_scale: 8.0}")[0]}  # fmt: skip
    assert len(keys) == 3
